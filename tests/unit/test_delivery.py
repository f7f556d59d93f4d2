"""deliver_due on real files and a real closed port (no mock): a destination that is
down delays (one try per run, rows take turns), a source file that changed fails the
row for good."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from cxr_orient.dicomnet.delivery import deliver_due
from cxr_orient.settings import get_settings
from db import crud
from db.migrate import upgrade
from db.models import OrientationLabel, OutboxStatus
from db.session import session_scope
from tests.utils.factories import register_version

SAMPLES = Path(__file__).resolve().parents[2] / "cxr_orient" / "samples" / "study1"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


def _answered(archive: Path, destination: str) -> list[int]:
    """Both sample films recorded, answered, with one outbox row each."""
    from cxr_orient.ingest import enqueue_paths

    enqueue_paths([archive], send=None, settings=get_settings())
    with session_scope() as session:
        model_id = register_version(session, "m1").id
        instances = [crud.find_instance_by_uid(session, sop_instance_uid=str(r.sop_instance_uid))
                     for r in crud.results(session)]
        records = [crud.PredictionRecord(
            instance_id=i.id, label=OrientationLabel.frontal, confidence=0.9, p_frontal=0.9,
            p_lateral=0.1, header_agrees=None, needs_review=False, decode_ms=None,
            inference_ms=None, batch_size=None) for i in instances if i is not None]
        crud.record_predictions(session, model_version_id=model_id, records=records,
                                worker="t", result_destinations=[destination])
        return [r.id for r in crud.outbox_rows(session)]


def test_a_down_destination_is_tried_once_per_run_and_rows_take_turns(
    tmp_path: Path, database_url: str, configure: Callable[..., None]
) -> None:
    archive = tmp_path / "archive"
    shutil.copytree(SAMPLES, archive)
    destination = f"dicom://NOBODY@127.0.0.1:{_closed_port()}"
    configure(database_url=database_url, ingest_root=tmp_path, data_dir=tmp_path / "d",
              result_destinations=destination, outbox_backoff_s=0.1,
              outbox_backoff_max_s=0.1, outbox_timeout_s=3)
    upgrade()
    ids = _answered(archive, destination)
    assert len(ids) == 2
    for expected_attempts in ([1, 0], [1, 1], [2, 1]):
        counts = deliver_due(get_settings())
        assert (counts.claimed, counts.sent, counts.retrying, counts.failed) == (2, 0, 2, 0)
        with session_scope() as session:
            rows = {r.id: r for r in crud.outbox_rows(session)}
        assert all(r.status == OutboxStatus.pending for r in rows.values())
        assert all("destination_unavailable" in str(r.last_error) for r in rows.values())
        # One try per run; an untried row's attempt is not counted; rows take turns.
        assert [rows[i].attempts for i in ids] == expected_attempts
        time.sleep(0.2)


def test_a_changed_source_file_fails_for_good(
    tmp_path: Path, sqlite_url: str, configure: Callable[..., None]
) -> None:
    archive = tmp_path / "archive"
    shutil.copytree(SAMPLES, archive)
    destination = f"dicom://NOBODY@127.0.0.1:{_closed_port()}"
    configure(database_url=sqlite_url, ingest_root=tmp_path, data_dir=tmp_path / "d",
              result_destinations=destination)
    upgrade()
    _answered(archive, destination)
    for path in archive.glob("*.dcm"):
        path.write_bytes(path.read_bytes() + b"\0\0")
    counts = deliver_due(get_settings())
    assert (counts.claimed, counts.failed) == (2, 2)
    with session_scope() as session:
        rows = crud.outbox_rows(session)
    assert {r.status for r in rows} == {OutboxStatus.failed}
    assert all(str(r.last_error).startswith("file_changed") for r in rows)
