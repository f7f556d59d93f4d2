"""Study completeness end to end, on PostgreSQL + Redis with a real ``celery -A worker
worker -B``: instances recorded as a network source records them (through
``dicomnet.receive.record_received``) wait for the study's quiet period, the worker's
beat-scheduled sweep releases them, the worker classifies them and writes one study
answer; a late instance gives the study a second answer row; pydicom-data's CT_small and
MR_small are refused out_of_scope and never classified."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from cxr_orient.dicomnet.receive import record_received
from cxr_orient.settings import get_settings
from db import crud
from db.models import Instance, InstanceStatus, Study
from db.session import session_scope
from tests.utils.corpus import film_dicom, rg1_dicom
from tests.utils.dicom_factory import COVID_CXR
from tests.utils.faults import private_redis
from tests.utils.worker import run_cli, running_worker, worker_env

pytestmark = pytest.mark.integration

STUDY = "1.2.826.0.1.3680043.10.11.1"
QUIET_S = 3.0


def _film(root: Path, name: str, view: str, index: int) -> Path:
    """A real film of ``view`` when ../shared/data has them, else RG1 (a frontal)."""
    path = root / f"{name}.dcm"
    header = "PA" if view == "frontal" else "LL"
    if COVID_CXR.is_dir():
        return film_dicom(path, view=view, index=index, view_position=header, study_uid=STUDY)
    return rg1_dicom(path, view_position=header, study_uid=STUDY)


def _pydicom_file(name: str, target: Path) -> Path:
    found = get_testdata_file(name)
    assert isinstance(found, str), f"pydicom-data's {name} is not installed"
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(found, target))


def _state(study_uid: str) -> tuple[dict[int, Any], list[Any], Any]:
    """(instance id -> (status, enqueued_at)), the study's answers, its last arrival."""
    with session_scope() as session:
        study = crud.get_or_create_study(session, study_instance_uid=study_uid, patient_id=None)
        rows = (
            session.query(Instance.id, Instance.status, Instance.enqueued_at)
            .filter(Instance.study_id == study.id)
            .all()
        )
        history = crud.study_answer_history(session, study_instance_uid=study_uid)
        arrival = session.get(Study, study.id)
        session.expunge_all()
    return (
        {i: (InstanceStatus(s), at) for i, s, at in rows},
        history,
        arrival.last_arrival_at if arrival else None,
    )


def _wait_until(test: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test():
            return
        time.sleep(0.3)
    raise TimeoutError(f"{what}: not after {timeout} s")


def test_a_study_is_held_released_classified_and_answered_again_after_a_late_instance(
    pg_url: str, tmp_path: Path, configure: Callable[..., None]
) -> None:
    # A redis-server of its own (free port, nothing on disk): the shared one has 16
    # databases, fewer than the checkouts running tests at once.
    with private_redis() as server:
        _held_released_answered(pg_url, server.url(0), tmp_path, configure)


def _held_released_answered(
    pg_url: str, redis_url: str, tmp_path: Path, configure: Callable[..., None]
) -> None:
    from tests.utils.env import migrate_from_template

    root = (tmp_path / "spool").resolve()
    values: dict[str, object] = dict(
        database_url=pg_url,
        broker_url=redis_url,
        ingest_root=root,
        data_dir=tmp_path / "data",
        batch_size=8,
        batch_max_wait_ms=100,
        study_quiet_s=QUIET_S,
    )
    configure(**values)
    migrate_from_template(pg_url)
    env = worker_env(**values)
    frontal = _film(root, "frontal", "frontal", 0)
    lateral = _film(root, "lateral", "lateral", 0)
    ct = _pydicom_file("CT_small.dcm", root / "ct.dcm")
    mr = _pydicom_file("MR_small.dcm", root / "mr.dcm")
    beat = ("-B", "--schedule", str(tmp_path / "beat-schedule"))

    with running_worker(env, tmp_path / "worker.log", extra_args=beat) as worker:
        report = record_received([frontal, lateral, ct, mr], send=None, settings=get_settings())
        assert len(report.held) == 2 and report.queued == []
        assert sorted(Path(p).name for p, _, _ in report.out_of_scope) == ["ct.dcm", "mr.dcm"]
        instances, history, _ = _state(STUDY)
        assert {s for s, _ in instances.values()} == {InstanceStatus.waiting}

        def answered(n: int) -> Callable[[], bool]:
            return lambda: len(_state(STUDY)[1]) >= n

        _wait_until(answered(1), "the study's first answer")
        instances, history, arrival = _state(STUDY)
        assert {s for s, _ in instances.values()} == {InstanceStatus.done}, worker.log()[-3000:]
        released = min(at for _, at in instances.values())
        assert released - arrival >= timedelta(seconds=QUIET_S), "released before quiet"
        assert len(history) == 1 and history[0].instance_count == 2
        if COVID_CXR.is_dir():
            assert (history[0].frontal_count, history[0].lateral_count) == (1, 1)

        late = _film(root, "late", "lateral", 1)
        again = record_received([late], send=None, settings=get_settings())
        assert len(again.held) == 1
        assert _state(STUDY)[0][again.held[0]][0] == InstanceStatus.waiting
        _wait_until(answered(2), "the study's answer after the late instance")
        time.sleep(2 * QUIET_S)  # nothing more comes: no third row
        by_study = run_cli("results", "--by-study", "--format", "json", env=env)

    instances, history, _ = _state(STUDY)
    assert [(a.sequence, a.instance_count) for a in history] == [(1, 2), (2, 3)]
    assert history[0].fingerprint != history[1].fingerprint
    if COVID_CXR.is_dir():
        assert history[1].lateral_count == 2 and history[1].flags in (None, "needs_review")
    assert by_study.returncode == 0, by_study.stderr
    rows = {r["study_instance_uid"]: r for r in json.loads(by_study.stdout)}
    assert rows[STUDY]["sequence"] == 2 and rows[STUDY]["instance_count"] == 3
    with session_scope() as session:
        refused = {
            Path(r.file_path).name: r for r in crud.results(session) if r.status == "out_of_scope"
        }
    assert sorted(refused) == ["ct.dcm", "mr.dcm"]
    assert all(r.answer is None and r.error and "modality" in r.error for r in refused.values())
    # Each refused file's own study is complete at once: answered with nothing classified.
    ct_study = rows[refused["ct.dcm"].study_instance_uid or ""]
    assert (ct_study["out_of_scope_count"], ct_study["flags"]) == (1, "no_frontal,no_lateral")
