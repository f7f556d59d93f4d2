"""`cxr-orient reclassify`, `results --model` and `results --changed-between` through
click's CliRunner: SQLite and the filesystem broker under tmp_path, the pipeline in this
process standing in for a worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import main
from cxr_orient.settings import SHIPPED_MODEL, get_settings
from tests.utils.corpus import rg1_dicom
from tests.utils.embedded import Embedded, embedded_setup
from worker.pipeline import classify_instances

SHIPPED_NAME = SHIPPED_MODEL.stem
OTHER = SHIPPED_MODEL.parent / "compact-v1.keras"


@pytest.fixture
def embedded(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> Embedded:
    return embedded_setup(tmp_path, configure, monkeypatch)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def _sent_ids(embedded: Embedded) -> list[int]:
    """Ids of the classify messages waiting in the broker folder, which are then taken."""
    messages = embedded.messages()
    for message in messages:
        message.path.unlink()
    return [int(m.args[0]) for m in messages]


def test_reclassify_after_a_promotion_from_the_command_line(embedded: Embedded) -> None:
    for k in range(3):
        rg1_dicom(embedded.root / f"{k}.dcm", view_position=None)
    assert cli("enqueue", str(embedded.root)).exit_code == 0
    ids = _sent_ids(embedded)
    assert sorted(classify_instances(ids, settings=get_settings()).done) == sorted(ids)
    assert cli("register", str(OTHER), "--reason", "r").exit_code == 0

    not_active = cli(
        "reclassify",
        "--model",
        "compact-v1",
        "--limit",
        "2",
        "--chunk-size",
        "1",
        "--actor",
        "alice",
    )

    assert not_active.exit_code == 0, not_active.output
    assert not_active.stdout.splitlines() == [
        "run 1 (compact-v1): sent 2, skipped 0 already answered by compact-v1",
        f"run 1 stopped after instance {sorted(ids)[1]}; go on with "
        "`cxr-orient reclassify --resume 1`",
    ]
    status = cli("status")
    assert (
        "reclassify: 2 instances queued or processing for a named version; unfinished runs: 1"
    ) in status.output
    misuse = cli("reclassify", "--resume", "1", "--model", "compact-v1")
    assert misuse.exit_code == 2 and "--resume goes on with the run's own" in misuse.output
    unknown = cli("reclassify", "--model", "nope")
    assert unknown.exit_code == 1 and "no model version named 'nope'" in unknown.output

    rest = cli("reclassify", "--resume", "1")
    assert rest.exit_code == 0, rest.output
    assert rest.stdout.splitlines() == [
        "run 1 (compact-v1): sent 1, skipped 0 already answered by compact-v1",
        "run 1 finished: 3 sent, 0 skipped in all",
    ]
    assert "resumed run 1" in rest.stderr
    again = _sent_ids(embedded)
    assert sorted(again) == sorted(ids)
    classify_instances(again, settings=get_settings())

    current = json.loads(cli("results", "--format", "json").stdout)
    assert {r["model_version"] for r in current} == {SHIPPED_NAME}  # compact-v1 not active
    only = json.loads(cli("results", "--format", "json", "--model", "compact-v1").stdout)
    assert len(only) == 3 and {r["model_version"] for r in only} == {"compact-v1"}
    assert cli("promote", "compact-v1", "--reason", "r").exit_code == 0
    promoted = json.loads(cli("results", "--format", "json").stdout)
    assert {r["model_version"] for r in promoted} == {"compact-v1"}
    changed = cli("results", "--format", "csv", "--changed-between", SHIPPED_NAME, "compact-v1")
    assert changed.exit_code == 0, changed.output
    assert changed.stdout.splitlines()[0] == (
        "sop_instance_uid,study_instance_uid,label_a,confidence_a,label_b,confidence_b"
    )
    # Both call RG1 (a chest PA) frontal: no answer changed.
    assert len(changed.stdout.splitlines()) == 1
    missing = cli("results", "--changed-between", SHIPPED_NAME, "nope")
    assert missing.exit_code == 1 and "no model version named 'nope'" in missing.output

    done = cli("reclassify")
    assert done.exit_code == 0
    assert done.stdout.splitlines()[0] == (
        "run 2 (compact-v1): sent 0, skipped 3 already answered by compact-v1"
    )
    assert embedded.messages() == []
