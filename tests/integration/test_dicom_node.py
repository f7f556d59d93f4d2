"""The DICOM node end to end, every peer a real process: a frontal + lateral study sent by
dcmtk's ``dcmsend`` to ``cxr-orient listen``, held until the study is quiet
(``CXR_STUDY_QUIET_S``), classified once by a real ``celery -A worker worker``, and the
answers back in a real Orthanc (the PACS) as Structured Reports by C-STORE, checked
through Orthanc's REST API and by ``dciodvfy``."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cxr_orient.settings import SHIPPED_MODEL
from tests.utils.corpus import film_dicom, rg1_dicom
from tests.utils.dciodvfy import KNOWN_WARNINGS, dciodvfy
from tests.utils.dicom_factory import COVID_CXR
from tests.utils.dicomnode import dcmsend, running_listener
from tests.utils.faults import private_redis
from tests.utils.orthanc import free_port, sr_sources, start
from tests.utils.worker import running_worker, worker_env

pytestmark = pytest.mark.integration

STUDY = "1.2.826.0.1.3680043.10.11.42"
QUIET_S = 2.0


def _study_state() -> tuple[dict[str, tuple[str, object]], object, dict[str, int]]:
    """(SOPInstanceUID -> (status, enqueued_at)), the study's last arrival, and
    SOPInstanceUID -> number of predictions."""
    from sqlalchemy import func, select

    from db.models import Instance, Prediction, Study
    from db.session import session_scope

    with session_scope() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == STUDY)).first()
        if study is None:
            return {}, None, {}
        rows = session.execute(
            select(
                Instance.sop_instance_uid, Instance.status, Instance.enqueued_at, Instance.id
            ).where(Instance.study_id == study.id)
        ).all()
        counts = dict(
            session.execute(
                select(Prediction.instance_id, func.count()).group_by(Prediction.instance_id)
            ).all()
        )
        return (
            {str(uid): (str(getattr(status, "value", status)), at) for uid, status, at, _ in rows},
            study.last_arrival_at,
            {str(uid): int(counts.get(id_, 0)) for uid, _, _, id_ in rows},
        )


def _epoch(at: datetime) -> float:
    """Seconds since the epoch of a database time (naive ones are UTC)."""
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_dcmsend_to_listen_to_worker_to_srs_in_orthanc(
    pg_url: str, tmp_path: Path, configure: Callable[..., None]
) -> None:
    import pydicom

    from tests.utils.env import migrate_from_template

    root = tmp_path / "node"
    (root / "src").mkdir(parents=True)
    frontal = rg1_dicom(root / "src" / "frontal.dcm", study_uid=STUDY)
    lateral = (
        film_dicom(root / "src" / "lateral.dcm", view="lateral", study_uid=STUDY)
        if COVID_CXR.is_dir()
        else rg1_dicom(root / "src" / "lateral.dcm", view_position="LL", study_uid=STUDY)
    )
    sources = {
        str(ds.SOPInstanceUID): ds
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in (frontal, lateral))
    }
    assert len(sources) == 2

    orthanc = start(
        tmp_path / "orthanc",
        free_port(),
        free_port(),
        {"cxr": ["CXR_ORIENT", "127.0.0.1", free_port()]},
    )
    try:
        with private_redis() as redis:
            values: dict[str, object] = dict(
                database_url=pg_url,
                broker_url=redis.url(0),
                ingest_root=root,
                data_dir=tmp_path / "data",
                model_path=SHIPPED_MODEL,
                batch_max_wait_ms=100,
                study_quiet_s=QUIET_S,
                spool_min_free_mb=1,
                result_destinations=f"dicom://ORTHANC@127.0.0.1:{orthanc.dicom_port}",
                outbox_interval_s=1,
                outbox_backoff_s=0.5,
                outbox_timeout_s=10,
            )
            configure(**values)
            migrate_from_template(pg_url)
            env = worker_env(**values)
            with (
                running_worker(env, tmp_path / "worker.log", ready_timeout=180) as worker,
                running_listener(env, tmp_path / "listen.log") as listener,
            ):
                sent = dcmsend(listener.port, [frontal, lateral])
                assert sent.returncode == 0, sent.stdout + sent.stderr
                _wait(lambda: len(_study_state()[0]) == 2, "both instances recorded", 60)
                # Held while the study is not quiet: nothing queued, nothing classified.
                while True:
                    instances, arrival, predictions = _study_state()
                    assert isinstance(arrival, datetime)
                    if time.time() - _epoch(arrival) >= QUIET_S * 0.75:
                        break
                    assert {s for s, _ in instances.values()} == {"waiting"}, instances
                    assert sum(predictions.values()) == 0
                    time.sleep(0.1)
                _wait(
                    lambda: {s for s, _ in _study_state()[0].values()} == {"done"},
                    "both instances classified",
                )
                _wait(lambda: len(orthanc.structured_reports()) >= 2, "2 SRs in Orthanc", 120)
                time.sleep(2 * QUIET_S)  # no second classification, no third SR
                instances, arrival, predictions = _study_state()
                srs = orthanc.structured_reports()
                log = worker.log()
                files = {uid: orthanc.instance_file(oid) for uid, (oid, _) in srs.items()}
                studies = [orthanc.get(f"/studies/{s}") for s in orthanc.get("/studies")]
    finally:
        orthanc.stop()

    assert predictions == {uid: 1 for uid in sources}, "each instance classified once"
    assert isinstance(arrival, datetime)
    for uid, (_, released) in instances.items():
        assert isinstance(released, datetime)
        assert _epoch(released) - _epoch(arrival) >= QUIET_S, (
            f"{uid} released before its study was quiet"
        )
    assert len(srs) == 2, log[-3000:]
    referenced = []
    for sr_uid, (_, tags) in srs.items():
        (source,) = sr_sources(tags)
        referenced.append(source)
        assert tags["StudyInstanceUID"] == STUDY, "the SR lies in the source study"
        assert tags["PatientID"] == str(sources[source].PatientID)
        path = tmp_path / f"{sr_uid}.dcm"
        path.write_bytes(files[sr_uid])
        errors, warnings, report = dciodvfy(path)
        assert errors == [], report
        assert all(any(k in w for k in KNOWN_WARNINGS) for w in warnings), warnings
    assert sorted(referenced) == sorted(sources), "one SR per answer, each its own source"
    # The images were sent to us, not to Orthanc: it holds one study, the SRs'.
    assert [s["MainDicomTags"]["StudyInstanceUID"] for s in studies] == [STUDY]
