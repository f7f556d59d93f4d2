"""deliver_due on real files and a real closed port (no mock): a destination that is
down delays (one try per run, rows take turns), a source file that changed fails the
row for good."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import update

from cxr_orient.dicomnet.delivery import deliver_due, report_for
from cxr_orient.dicomnet.sr import new_sr_uid
from cxr_orient.settings import get_settings
from db import crud
from db.models import OrientationLabel, OutboxMessage, OutboxStatus
from db.session import session_scope
from tests.utils.env import migrate_from_template
from tests.utils.factories import prediction_record, register_version

SAMPLES = Path(__file__).resolve().parents[4] / "cxr_orient" / "samples" / "study1"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


def _answered(archive: Path, destination: str) -> list[int]:
    """Both sample films recorded, answered, with one outbox row each."""
    from cxr_orient.ingest import enqueue_paths

    enqueue_paths([archive], send=None, settings=get_settings())
    with session_scope() as session:
        model = register_version(session, "m1")
        crud.activate_model_version(session, version=model, actor="t", reason="in service")
        model_id = model.id
        instances = [
            crud.find_instance_by_uid(session, sop_instance_uid=str(r.sop_instance_uid))
            for r in crud.results(session)
        ]
        records = [
            prediction_record(
                instance_id=i.id,
                label=OrientationLabel.frontal,
                confidence=0.9,
                p_frontal=0.9,
                p_lateral=0.1,
                header_agrees=None,
                needs_review=False,
                decode_ms=None,
                inference_ms=None,
                batch_size=None,
            )
            for i in instances
            if i is not None
        ]
        crud.record_predictions(
            session,
            model_version_id=model_id,
            records=records,
            worker="t",
            result_destinations=[destination],
            new_report_uid=new_sr_uid,
        )
        return [r.id for r in crud.outbox_rows(session)]


def test_a_down_destination_is_tried_once_per_run_and_rows_take_turns(
    tmp_path: Path, database_url: str, configure: Callable[..., None]
) -> None:
    archive = tmp_path / "archive"
    shutil.copytree(SAMPLES, archive)
    destination = f"dicom://NOBODY@127.0.0.1:{_closed_port()}"
    configure(
        database_url=database_url,
        ingest_root=tmp_path,
        data_dir=tmp_path / "d",
        result_destinations=destination,
        outbox_backoff_s=0.1,
        outbox_backoff_max_s=0.1,
        outbox_timeout_s=3,
    )
    migrate_from_template(database_url)  # what upgrade() would leave
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


def test_a_dead_destination_backs_off_by_its_own_failures_and_names_the_cause(
    tmp_path: Path, database_url: str, configure: Callable[..., None]
) -> None:
    """The destination, not the row, counts failures: its wait doubles up to the cap
    while rows take turns, no row of it is claimed before that, and the row's error says
    "connection refused" (pynetdicom calls a closed port an aborted association)."""
    archive = tmp_path / "archive"
    shutil.copytree(SAMPLES, archive)
    destination = f"dicom://NOBODY@127.0.0.1:{_closed_port()}"
    configure(
        database_url=database_url,
        ingest_root=tmp_path,
        data_dir=tmp_path / "d",
        result_destinations=destination,
        outbox_backoff_s=0.3,
        outbox_backoff_max_s=1.2,
        outbox_timeout_s=3,
    )
    migrate_from_template(database_url)  # what upgrade() would leave
    assert len(_answered(archive, destination)) == 2
    waits = []
    for failures in (1, 2, 3, 4):
        counts = deliver_due(get_settings())
        assert (counts.claimed, counts.retrying) == (2, 2), counts
        with session_scope() as session:
            state = crud.destination_states(session)[destination]
            rows = crud.outbox_rows(session)
        assert state.consecutive_failures == failures
        assert state.next_attempt_at is not None
        assert all("connection refused" in str(r.last_error) for r in rows), rows
        assert "connection refused" in str(state.last_error)
        wait = (
            state.next_attempt_at.replace(tzinfo=None) - datetime.now(UTC).replace(tzinfo=None)
        ).total_seconds()
        waits.append(round(wait, 1))
        # Every row is due by its own clock, but the destination is backing off.
        with session_scope() as session:
            session.execute(update(OutboxMessage).values(next_attempt_at=datetime.now(UTC)))
        assert deliver_due(get_settings()).claimed == 0, "claimed while backing off"
        time.sleep(wait + 0.05)
    assert waits[0] <= 0.3 < waits[1] <= 0.6 < waits[2] <= 1.2, waits
    assert waits[3] <= 1.2, "capped at CXR_OUTBOX_BACKOFF_MAX_S"


def test_a_changed_source_file_fails_for_good(
    tmp_path: Path, sqlite_url: str, configure: Callable[..., None]
) -> None:
    archive = tmp_path / "archive"
    shutil.copytree(SAMPLES, archive)
    destination = f"dicom://NOBODY@127.0.0.1:{_closed_port()}"
    configure(
        database_url=sqlite_url,
        ingest_root=tmp_path,
        data_dir=tmp_path / "d",
        result_destinations=destination,
    )
    migrate_from_template(sqlite_url)  # what upgrade() would leave
    _answered(archive, destination)
    for path in archive.glob("*.dcm"):
        path.write_bytes(path.read_bytes() + b"\0\0")
    counts = deliver_due(get_settings())
    assert (counts.claimed, counts.failed) == (2, 2)
    with session_scope() as session:
        rows = crud.outbox_rows(session)
    assert {r.status for r in rows} == {OutboxStatus.failed}
    assert all(str(r.last_error).startswith("file_changed") for r in rows)


def test_an_answer_on_a_replaced_file_is_reported_from_that_file(
    tmp_path: Path, sqlite_url: str, configure: Callable[..., None]
) -> None:
    """A uid conflict under ``replace`` points the instance at new bytes; the SR of the
    answer made on the earlier bytes is built from the earlier file."""
    from db.models import UidConflictAction

    archive = tmp_path / "archive"
    shutil.copytree(SAMPLES, archive)
    destination = f"dicom://NOBODY@127.0.0.1:{_closed_port()}"
    configure(
        database_url=sqlite_url,
        ingest_root=tmp_path,
        data_dir=tmp_path / "d",
        result_destinations=destination,
    )
    migrate_from_template(sqlite_url)  # what upgrade() would leave
    _answered(archive, destination)
    resent = tmp_path / "resent.dcm"
    resent.write_bytes((archive / "frontal.dcm").read_bytes() + b"\0\0")
    with session_scope() as session:
        row = crud.outbox_rows(session)[0]
        work = crud.outbox_work(session, outbox_ids=[row.id])[0]
        instance = crud.find_instance_by_uid(session, sop_instance_uid=str(work.sop_instance_uid))
        assert instance is not None
        old_path, old_sha = instance.file_path, instance.file_sha256
        crud.add_uid_conflict(
            session,
            instance_id=instance.id,
            known_status=instance.status,
            study_instance_uid="1.2",
            study_matches=True,
            known_file_path=old_path,
            known_file_sha256=old_sha,
            known_file_size=instance.file_size,
            new_file_path=str(resent),
            new_file_sha256="f" * 64,
            new_file_size=1,
            policy="replace",
            action=UidConflictAction.replaced,
            detail="test",
        )
        assert crud.replace_instance_file(
            session,
            instance_id=instance.id,
            expected_sha256=old_sha,
            file_path=str(resent),
            file_sha256="f" * 64,
            file_size=1,
            series_instance_uid=None,
            modality="DX",
            transfer_syntax_uid=None,
            header_view_position="PA",
        )
    with session_scope() as session:
        work = crud.outbox_work(session, outbox_ids=[row.id])[0]
    assert (work.file_path, work.file_sha256) == (old_path, old_sha)
    report = report_for(work, get_settings().intake)
    assert (
        report.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
        == work.sop_instance_uid
    )


def _sr_for(tmp_path: Path) -> Dataset:
    from cxr_orient.answer import Answer
    from cxr_orient.dicomnet.sr import build_sr

    source = pydicom.dcmread(SAMPLES / "frontal.dcm", stop_before_pixels=True)
    answer = Answer(
        label="frontal",
        confidence=0.9,
        p_frontal=0.9,
        p_lateral=0.1,
        needs_review=False,
        header_agrees=True,
        rotation=0,
        mirrored=False,
        unusual_score=1.0,
    )
    return build_sr(
        source,
        answer,
        model_name="m",
        model_architecture="a",
        answered_at=datetime(2026, 12, 6, tzinfo=UTC),
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )


def _cause(destination: str, sr: Dataset, timeout_s: float = 2) -> str:
    from cxr_orient.dicomnet.destinations import sender_for
    from cxr_orient.errors import DestinationUnavailableError
    from cxr_orient.settings import Settings

    sender = sender_for(destination, Settings(outbox_timeout_s=timeout_s).results)
    try:
        with pytest.raises(DestinationUnavailableError) as caught:
            sender.send(sr)
    finally:
        sender.close()
    return str(caught.value)


def test_the_error_names_the_cause(tmp_path: Path) -> None:
    """A closed port, a peer that rejects our AE title (a real pynetdicom SCP), a peer
    that accepts the TCP connection and never answers: three causes, three messages
    (all three read "association not established (aborted)" or "(rejected)" before)."""
    from pynetdicom import AE, AllStoragePresentationContexts

    sr = _sr_for(tmp_path)
    closed = _cause(f"dicom://NOBODY@127.0.0.1:{_closed_port()}", sr)
    assert "connection refused" in closed, closed
    stow = _cause(f"dicomweb+http://127.0.0.1:{_closed_port()}/dicom-web", sr)
    assert "connection refused" in stow, stow

    scp = AE(ae_title="PACS")
    scp.supported_contexts = AllStoragePresentationContexts
    scp.require_calling_aet = ["SOMEONE_ELSE"]
    server = scp.start_server(("127.0.0.1", 0), block=False)
    assert server is not None
    try:
        port = server.server_address[1]
        # Under a loaded test run pynetdicom's requestor once saw the peer's A-ASSOCIATE-RJ
        # only as the transport closing ("aborted"): the rejection is asked up to 3 times.
        tries = []
        for _ in range(3):
            tries.append(_cause(f"dicom://PACS@127.0.0.1:{port}", sr))
            if "association rejected" in tries[-1]:
                break
    finally:
        server.shutdown()
    rejected = tries[-1]
    assert "association rejected" in rejected and "CXR_ORIENT" in rejected, tries

    with socket.socket() as silent:  # listens (the kernel accepts), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        hung = _cause(f"dicom://PACS@127.0.0.1:{silent.getsockname()[1]}", sr, timeout_s=1)
    assert "timed out" in hung, hung
