"""The command line (cli/) through click's CliRunner, in the test process: SQLite and the
filesystem broker under tmp_path, no server, no worker."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from cli.main import main
from cli.results import EXPORT_COLUMNS
from cxr_orient.settings import SHIPPED_MODEL, get_settings
from db import crud
from db.session import session_scope
from tests.utils.corpus import rg1_dicom
from tests.utils.embedded import Embedded, embedded_setup

SHIPPED_NAME = SHIPPED_MODEL.stem
STUDY = "1.2.826.0.1.3680043.10.8.1"


@pytest.fixture
def embedded(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> Embedded:
    return embedded_setup(tmp_path, configure, monkeypatch)


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=True)


def _archive(embedded: Embedded) -> dict[str, Path]:
    """Two instances of one study and a text file."""
    notes = embedded.root / "notes.txt"
    notes.write_text("not an image")
    return {
        "a": rg1_dicom(embedded.root / "a.dcm", study_uid=STUDY),
        "b": rg1_dicom(embedded.root / "b.dcm", study_uid=STUDY, view_position=None),
        "notes": notes,
    }


def _assert_clean_error(result: Result, message: str) -> None:
    """Non-zero, one ``Error: ...`` line naming the problem, no traceback."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert lines == [f"Error: {message}"], result.output
    assert "Traceback" not in result.output


def test_db_upgrade(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded = embedded_setup(tmp_path, configure, monkeypatch, migrate=False)
    before = cli("status")
    assert before.exit_code == 1
    assert "db upgrade" in before.output and "Traceback" not in before.output

    result = cli("db", "upgrade")

    assert result.exit_code == 0, result.output
    assert result.output == f"database at {embedded.database_url} is at head\n"
    assert cli("status").exit_code == 0


def test_enqueue_prints_the_counts_and_queues(embedded: Embedded) -> None:
    files = _archive(embedded)

    result = cli("enqueue", str(embedded.root))

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "3 files: 2 queued, 0 already known, 0 uid_conflict, 0 out_of_scope, 1 refused "
        "(1 studies)\n"
    )
    assert f"refused {files['notes']}: not_dicom:" in result.stderr
    messages = embedded.messages()
    assert len(messages) == 2 and {m.task for m in messages} == {"cxr_orient.classify"}

    again = cli("enqueue", str(embedded.root))
    assert again.stdout == (
        "3 files: 0 queued, 2 already known, 0 uid_conflict, 0 out_of_scope, 1 refused "
        "(1 studies)\n"
    )
    assert len(embedded.messages()) == 2


def test_status_counts_and_queue_depth(embedded: Embedded) -> None:
    _archive(embedded)
    assert cli("enqueue", str(embedded.root)).exit_code == 0

    result = cli("status")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"database: {embedded.database_url}"
    assert lines[1] == "broker:   filesystem:// (embedded filesystem transport)"
    assert lines[2] == (
        "instances: waiting 0, queued 2, processing 0, done 0, failed 1, out_of_scope 0"
    )
    assert lines[3] == "queue depth: 2"
    assert lines[4] == "active model: none"
    with session_scope() as session:
        crud.mark_failed(
            session,
            instance_id=crud.unfinished_instance_ids(session)[0],
            error_code="test",
            error_message="by the test",
        )
    assert (
        "instances: waiting 0, queued 1, processing 0, done 0, failed 2, out_of_scope 0"
        in cli("status").stdout
    )


def test_results_as_json_and_csv(embedded: Embedded) -> None:
    files = _archive(embedded)
    assert cli("enqueue", str(embedded.root)).exit_code == 0

    as_json = cli("results", "--format", "json")
    as_csv = cli("results", "--format", "csv")

    assert as_json.exit_code == 0 and as_csv.exit_code == 0, as_json.output + as_csv.output
    rows = json.loads(as_json.stdout)
    assert [list(r) for r in rows] == [list(EXPORT_COLUMNS)] * 3
    by_path = {r["file_path"]: r for r in rows}
    assert set(by_path) == {str(p) for p in files.values()}
    assert (by_path[str(files["a"])]["status"], by_path[str(files["a"])]["header_view"]) == (
        "queued",
        "PA",
    )
    assert by_path[str(files["b"])]["header_view"] is None
    assert by_path[str(files["a"])]["study_instance_uid"] == STUDY
    notes = by_path[str(files["notes"])]
    assert notes["status"] == "failed" and notes["error"].startswith("not_dicom:")
    assert notes["sop_instance_uid"] is None

    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert list(table[0]) == list(EXPORT_COLUMNS)
    assert {r["file_path"]: r["status"] for r in table} == {
        p: r["status"] for p, r in by_path.items()
    }
    only_study = json.loads(cli("results", "--format", "json", "--study", STUDY).stdout)
    assert sorted(r["file_path"] for r in only_study) == sorted([str(files["a"]), str(files["b"])])


def test_models_lists_versions_and_the_active_one(embedded: Embedded) -> None:
    from cxr_orient.modelstore import read_card
    from cxr_orient.registry import ensure_active_model

    empty = cli("models")
    assert empty.exit_code == 0 and empty.stdout == ""

    with session_scope() as session:
        ensure_active_model(session, get_settings().inference)

    result = cli("models")

    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    figure = read_card(SHIPPED_MODEL).metrics["held_out_test"]["balanced_accuracy"]["value"]
    architecture = read_card(SHIPPED_MODEL).architecture
    assert line.split() == [
        SHIPPED_NAME,
        architecture,
        "active",
        "ACTIVE",
        f"balanced_accuracy={figure}",
    ]


def test_promote_and_rollback_errors_are_one_clean_line(embedded: Embedded) -> None:
    _assert_clean_error(cli("promote", "nope", "--reason", "r"), "no model version named 'nope'")
    _assert_clean_error(
        cli("rollback", "--reason", "r"), "no previously active model version to roll back to"
    )
    from cxr_orient.registry import ensure_active_model

    with session_scope() as session:
        ensure_active_model(session, get_settings().inference)
    _assert_clean_error(
        cli("promote", SHIPPED_NAME, "--reason", "r"), f"{SHIPPED_NAME!r} is already active"
    )
    _assert_clean_error(
        cli("rollback", "--reason", "r"), "no previously active model version to roll back to"
    )
    missing_reason = cli("promote", SHIPPED_NAME)
    assert missing_reason.exit_code == 2 and "--reason" in missing_reason.output


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


def test_help_of_every_command(embedded: Embedded) -> None:
    commands = list(_commands(main))
    assert {("enqueue",), ("db", "upgrade"), ("label", "import"), ("retrain",)} <= set(commands)
    for words in [(), *commands]:
        result = cli(*words, "--help")
        assert result.exit_code == 0, (words, result.output)
        assert result.stdout.startswith("Usage: "), (words, result.stdout)
        assert " ".join(words) in result.stdout.splitlines()[0]


def test_enqueue_wait_without_a_backend_fails_fast(embedded: Embedded) -> None:
    _archive(embedded)
    start = time.monotonic()

    result = cli("enqueue", str(embedded.root), "--wait", env={"KERAS_BACKEND": "nonexistent"})

    assert time.monotonic() - start < 10
    _assert_clean_error(
        result,
        "KERAS_BACKEND='nonexistent' is not a Keras backend (one of tensorflow, jax, torch, numpy)",
    )
    with session_scope() as session:
        assert sum(crud.status_counts(session).values()) == 0, "nothing recorded"
    assert embedded.messages() == []


def test_outbox_in_status_and_retry_verb(
    embedded: Embedded, configure: Callable[..., None]
) -> None:
    assert "outbox: no result destinations" in cli("status").stdout
    bad = cli("outbox", "retry", "--destination", "http://not-a-destination")
    assert bad.exit_code == 1 and "scheme must be dicom://" in bad.output
    ok = cli("outbox", "retry")
    assert ok.exit_code == 0 and "0 failed rows pending again" in ok.stdout
    configure(result_destinations="dicom://PACS@127.0.0.1:4242")
    shown = cli("status")
    assert "  dicom://PACS@127.0.0.1:4242: pending 0, sent 0, failed 0" in shown.stdout
