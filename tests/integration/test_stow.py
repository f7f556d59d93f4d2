"""STOW-RS in, end to end: the real `cxr-orient serve` process, dicomweb-client as the
sender, a real worker classifying what arrived, then the spool purge (issue 11, items 6
and 7), on SQLite and PostgreSQL with Redis."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from cxr_orient.dicomnet.retention import purge_spool
from cxr_orient.dicomnet.stow import CANNOT_UNDERSTAND
from cxr_orient.settings import get_settings
from db import crud
from db.models import OrientationLabel, utcnow
from db.session import session_scope
from tests.utils.faults import private_redis, wait_until
from tests.utils.services import serving
from tests.utils.worker import REPO, run_cli, running_worker, worker_env

pytestmark = pytest.mark.integration

SAMPLES = REPO / "cxr_orient" / "samples"
STUDY = {n: f"1.2.826.0.1.3680043.10.1337.{n}" for n in (1, 2, 3)}
BOUNDARY = "integration-boundary"


def _token(env: dict[str, str], name: str) -> str:
    created = run_cli("token", "create", name, "--scope", "stow", env=env)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def _sample(study: int, view: str) -> Path:
    return SAMPLES / f"study{study}" / f"{view}.dcm"


def _multipart(*parts: bytes) -> bytes:
    out = b""
    for data in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _instances(*studies: int) -> dict[str, crud.Instance]:
    with session_scope() as session:
        out = {}
        for n in studies:
            for view in ("frontal", "lateral"):
                uid = f"{STUDY[n]}.{1 if view == 'frontal' else 2}"
                row = crud.find_instance_by_uid(session, sop_instance_uid=uid)
                assert row is not None, uid
                out[f"{n}-{view}"] = row
        return out


@pytest.fixture
def broker_url() -> Iterator[str]:
    """A Redis server of this test's own (the shared one on 6379 has 16 databases, fewer
    than the per-checkout CXR_TEST_REDIS_DB numbers)."""
    with private_redis() as server:
        yield server.url(0)


def test_stow_then_classify_then_purge(
    database_url: str, broker_url: str, tmp_path: Path, configure: Callable[..., None]
) -> None:
    from tests.utils.env import migrate_from_template

    root = tmp_path / "root"
    archive = root / "archive"
    archive.mkdir(parents=True)
    settings = dict(
        database_url=database_url,
        broker_url=broker_url,
        ingest_root=root,
        data_dir=tmp_path / "data",
        batch_size=8,
        batch_max_wait_ms=100,
    )
    env = worker_env(**settings)
    configure(**settings)
    migrate_from_template(database_url)
    token = _token(env, "modality-1")
    revoked = _token(env, "old-modality")
    assert run_cli("token", "revoke", "old-modality", env=env).returncode == 0
    log = tmp_path / "serve.log"

    with serving(env, log) as base:
        assert httpx.get(f"{base}/readyz", timeout=10).json()["status"] == "ready"
        study1 = [pydicom.dcmread(_sample(1, v)) for v in ("frontal", "lateral")]

        # The real client, with a token: 200 and both instances recorded.
        client = DICOMwebClient(f"{base}/dicom-web", headers={"Authorization": f"Bearer {token}"})
        answer = client.store_instances(study1, study_instance_uid=STUDY[1])
        assert sorted(i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence) == [
            f"{STUDY[1]}.1",
            f"{STUDY[1]}.2",
        ]
        assert "FailedSOPSequence" not in answer

        # Without a token, and with a revoked one: 401, nothing recorded.
        for headers in ({}, {"Authorization": f"Bearer {revoked}"}):
            refused = DICOMwebClient(f"{base}/dicom-web", headers=headers)
            with pytest.raises(requests.HTTPError) as error:
                refused.store_instances([pydicom.dcmread(_sample(3, "frontal"))])
            response = error.value.response
            assert response is not None and response.status_code == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")

        # A bad part among good ones: 202, the bad one in FailedSOPSequence, the rest kept.
        mixed = httpx.post(
            f"{base}/dicom-web/studies/{STUDY[2]}",
            content=_multipart(
                _sample(2, "frontal").read_bytes(),
                b"\x00not DICOM at all",
                _sample(2, "lateral").read_bytes(),
            ),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            },
            timeout=60,
        )
        assert mixed.status_code == 202, mixed.text
        body = pydicom.Dataset.from_json(mixed.json())
        assert [int(i.FailureReason) for i in body.FailedSOPSequence] == [CANNOT_UNDERSTAND]
        assert sorted(i.ReferencedSOPInstanceUID for i in body.ReferencedSOPSequence) == [
            f"{STUDY[2]}.1",
            f"{STUDY[2]}.2",
        ]
        # The bad part is recorded too: a failed row with its reason (as listen's C210).
        with session_scope() as session:
            assert crud.status_counts(session).get("failed") == 1

        # An operator's archive enqueued in place, beside what came over the network.
        in_place = archive / "rg1.dcm"
        shutil.copy(SAMPLES / "rg1" / "RG1_J2KI.dcm", in_place)
        assert run_cli("enqueue", str(in_place), env=env).returncode == 0

        with running_worker(env, tmp_path / "worker.log") as worker:

            def all_done() -> bool:
                with session_scope() as session:
                    counts = crud.status_counts(session)
                # 4 received + 1 enqueued, and the refused part's failed row.
                return counts.get("done", 0) + counts.get("failed", 0) == 6

            wait_until(all_done, timeout=300, what="6 instances finished")
            worker_log = worker.log()
        # Study 3 arrives once the worker has gone: it stays unfinished (held for its
        # study's quiet period, then queued by this server's release sweep).
        late = client.store_instances(
            [pydicom.dcmread(_sample(3, v)) for v in ("frontal", "lateral")]
        )
        assert len(late.ReferencedSOPSequence) == 2

    server_log = log.read_text()
    assert token not in server_log and STUDY[1] not in server_log, server_log
    assert "STOW-RS from token 'modality-1'" in server_log
    assert "PatientID" not in worker_log

    rows = _instances(1, 2, 3)
    statuses = {k: r.status for k, r in rows.items()}
    assert {
        k: statuses.pop(k) for k in ("1-frontal", "1-lateral", "2-frontal", "2-lateral")
    } == dict.fromkeys(("1-frontal", "1-lateral", "2-frontal", "2-lateral"), "done")
    assert set(statuses) == {"3-frontal", "3-lateral"}
    assert set(statuses.values()) <= {"waiting", "queued"}, statuses
    spool = get_settings().intake.effective_spool_dir
    assert all(Path(r.file_path).is_relative_to(spool) for r in rows.values())
    with session_scope() as session:
        crud.add_label(
            session,
            instance_id=rows["1-lateral"].id,
            label=OrientationLabel.lateral,
            source="review",
            annotator="qa",
        )
        archived = crud.find_instance_by_uid(
            session, sop_instance_uid=pydicom.dcmread(in_place).SOPInstanceUID
        )
        assert archived is not None and archived.status == "done"

    counts = purge_spool(get_settings(), utcnow())

    # The three finished, unlabelled received files, and the refused part's bytes.
    assert (counts.deleted, counts.errors) == (4, 0)
    gone = {"1-frontal", "2-frontal", "2-lateral"}
    for key, row in rows.items():
        assert Path(row.file_path).exists() == (key not in gone), key
    assert in_place.is_file(), "an archive enqueued in place is never purged"
    after = _instances(1, 2, 3)
    assert {k for k, r in after.items() if r.file_purged_at is not None} == gone
    assert purge_spool(get_settings(), utcnow()).purged == 0


def _hang_up_mid_part(port: int, token: str, whole: bytes, cut: bytes) -> None:
    """A chunked STOW-RS upload whose sender goes away inside its second part."""
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        "\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    body = _multipart(whole, cut)
    sent = body[: len(body) - len(cut) // 2]  # the first part whole, half the second
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for start in range(0, len(sent), 65536):
            piece = sent[start : start + 65536]
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        time.sleep(1.0)


def test_a_sender_gone_mid_request_leaves_its_whole_parts_recorded(
    tmp_path: Path, broker_url: str, configure: Callable[..., None]
) -> None:
    from tests.utils.corpus import rg1_dicom
    from tests.utils.env import migrate_from_template

    study = "1.2.826.0.1.3680043.8.498.4242"
    root = tmp_path / "root"
    settings = dict(
        database_url=f"sqlite:///{tmp_path / 'cxr.db'}",
        broker_url=broker_url,
        ingest_root=root,
        data_dir=tmp_path / "data",
    )
    env = worker_env(**settings)
    configure(**settings)
    migrate_from_template(str(settings["database_url"]))
    token = _token(env, "modality")
    made = [rg1_dicom(tmp_path / f"{i}.dcm", study_uid=study) for i in (1, 2)]
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in made]
    with serving(env, tmp_path / "serve.log") as base:
        port = int(base.rsplit(":", 1)[1])
        _hang_up_mid_part(port, token, made[0].read_bytes(), made[1].read_bytes())

        def first_recorded() -> bool:
            with session_scope() as session:
                return crud.find_instance_by_uid(session, sop_instance_uid=uids[0]) is not None

        wait_until(first_recorded, timeout=30, what="the whole part recorded")
        # The server is still there for the next sender.
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    with session_scope() as session:
        assert crud.find_instance_by_uid(session, sop_instance_uid=uids[1]) is None
        # Held for its study's quiet period: recorded, not yet queued.
        assert {k: v for k, v in crud.status_counts(session).items() if v} == {"waiting": 1}
    spooled = sorted(p.name for p in (get_settings().intake.effective_spool_dir / study).iterdir())
    assert len(spooled) == 1 and spooled[0].startswith(uids[0]), spooled
