"""Answers back to PACS as Structured Reports, with a real Orthanc as the PACS.

- A frontal + lateral study enqueued from a folder, a real celery worker (with beat),
  Redis and PostgreSQL, destinations Orthanc A by C-STORE and Orthanc B by STOW-RS:
  each answer's SR lands in both, in the source study, referencing its source instance.
- Both Orthancs stopped when the next study's answers are ready: the outbox retries
  (attempts > 1, last error recorded); restarted on the same storage, each SR is there
  exactly once; a re-send of a delivered SR (what a crash between sending and marking
  does) is stored once.
- A refusal that retrying cannot fix (HTTP 404: a PACS without DICOMweb) fails the row
  for good; after the operator fixes the PACS, ``cxr-orient outbox retry`` delivers it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cxr_orient.settings import SHIPPED_MODEL
from tests.utils.orthanc import Orthanc, free_port, start
from tests.utils.worker import REPO, run_cli, running_worker, worker_env

pytestmark = pytest.mark.integration

SAMPLES = REPO / "cxr_orient" / "samples"
CALLING_AE = "CXR_ORIENT"


@pytest.fixture
def broker_url(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own, database CXR_TEST_REDIS_DB: the shared one on
    6379 has 16 databases, fewer than the numbers handed out to parallel checkouts."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--databases",
            "32",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.2)
    yield f"redis://127.0.0.1:{port}/{int(os.environ.get('CXR_TEST_REDIS_DB', '11'))}"
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def orthancs(tmp_path: Path) -> Iterator[tuple[Orthanc, Orthanc]]:
    allowed = {"cxr": [CALLING_AE, "127.0.0.1", free_port()]}
    a = start(tmp_path / "orthanc-a", free_port(), free_port(), allowed)
    try:
        b = start(tmp_path / "orthanc-b", free_port(), free_port(), allowed)
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _outbox(database_url: str) -> list[dict[str, object]]:
    from db import crud
    from db.session import make_engine, session_scope

    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            return [
                {
                    "destination": r.destination,
                    "status": r.status.value,
                    "attempts": r.attempts,
                    "last_error": r.last_error,
                    "uid": r.sr_sop_instance_uid,
                    "prediction_id": r.prediction_id,
                }
                for r in crud.outbox_rows(session)
            ]
    finally:
        engine.dispose()


def _srs(orthanc: Orthanc) -> dict[str, dict[str, object]]:
    """SOPInstanceUID -> simplified tags of every SR stored in ``orthanc``."""
    return {uid: tags for uid, (_, tags) in orthanc.structured_reports().items()}


def _study(root: Path, name: str) -> dict[str, str]:
    """Copy a bundled study under ``root``; SOPInstanceUID -> StudyInstanceUID."""
    import pydicom

    target = root / name
    shutil.copytree(SAMPLES / name, target)
    return {
        ds.SOPInstanceUID: ds.StudyInstanceUID
        for ds in (
            pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(target.glob("*.dcm"))
        )
    }


def test_srs_reach_pacs_by_cstore_and_stow_and_survive_an_outage(
    pg_url: str, broker_url: str, tmp_path: Path, orthancs: tuple[Orthanc, Orthanc]
) -> None:
    from tests.utils.env import migrate_from_template

    a, b = orthancs
    archive = tmp_path / "archive"
    archive.mkdir()
    destinations = [
        f"dicom://ORTHANC@127.0.0.1:{a.dicom_port}",
        f"dicomweb+http://127.0.0.1:{b.http_port}/dicom-web",
    ]
    env = worker_env(
        database_url=pg_url,
        broker_url=broker_url,
        ingest_root=archive,
        data_dir=tmp_path / "data",
        model_path=SHIPPED_MODEL,
        batch_max_wait_ms=100,
        result_destinations=",".join(destinations),
        outbox_interval_s=1,
        outbox_backoff_s=0.5,
        outbox_backoff_max_s=2,
        outbox_timeout_s=5,
    )
    migrate_from_template(pg_url)
    first = _study(archive, "study1")

    with running_worker(
        env, tmp_path / "worker.log", extra_args=("-B", "-s", str(tmp_path / "beat"))
    ) as worker:
        enqueued = run_cli(
            "enqueue", str(archive / "study1"), "--wait", "--timeout", "240", env=env
        )
        assert enqueued.returncode == 0, enqueued.stderr + worker.log()
        _wait(
            lambda: [r["status"] for r in _outbox(pg_url)] == ["sent"] * 4,
            "4 SRs sent (2 answers x 2 destinations)",
        )
        for orthanc in (a, b):
            srs = _srs(orthanc)
            assert len(srs) == 2, orthanc.log_path.read_text()[-2000:]
            referenced = set()
            for tags in srs.values():
                evidence = tags["CurrentRequestedProcedureEvidenceSequence"][0]  # type: ignore[index]
                sources = [
                    s["ReferencedSOPInstanceUID"]
                    for series in evidence["ReferencedSeriesSequence"]
                    for s in series["ReferencedSOPSequence"]
                ]
                assert len(sources) == 1, "each SR references exactly its source image"
                referenced.add(sources[0])
                assert tags["StudyInstanceUID"] == first[sources[0]]
                assert tags["Manufacturer"] == "cxr-orient"
            assert referenced == set(first)
            studies = orthanc.get("/studies")
            assert len(studies) == 1
            study = orthanc.get(f"/studies/{studies[0]}")
            assert study["MainDicomTags"]["StudyInstanceUID"] == next(iter(first.values()))
        assert set(_srs(a)) == {r["uid"] for r in _outbox(pg_url)}

        # The PACS goes down; the next study's answers wait in the outbox.
        a.stop()
        b.stop()
        second = _study(archive, "study2")
        enqueued = run_cli(
            "enqueue", str(archive / "study2"), "--wait", "--timeout", "240", env=env
        )
        assert enqueued.returncode == 0, enqueued.stderr + worker.log()
        _wait(
            lambda: (
                sum(
                    1
                    for r in _outbox(pg_url)
                    if r["status"] == "pending" and int(str(r["attempts"])) > 1 and r["last_error"]
                )
                == 4
            ),
            "4 pending rows retried at least twice, with their last error",
        )
        status = run_cli("status", env=env)
        assert status.returncode == 0, status.stderr
        assert f"{destinations[0]}: pending 2, sent 2, failed 0, oldest pending" in (
            status.stdout
        ), status.stdout
        pending = [r for r in _outbox(pg_url) if r["status"] == "pending"]
        assert all("destination_unavailable" in str(r["last_error"]) for r in pending), pending

        a.start()
        b.start()
        _wait(
            lambda: [r["status"] for r in _outbox(pg_url)] == ["sent"] * 8,
            "every SR sent after the PACS came back",
            timeout=120,
        )
    rows = _outbox(pg_url)
    uids = {str(r["uid"]) for r in rows}
    assert len(uids) == 4
    for orthanc in (a, b):
        srs = _srs(orthanc)
        assert set(srs) == uids, "each SR stored exactly once, none lost"
        assert len(orthanc.instances()) == 4
        assert len(orthanc.get("/studies")) == 2
    assert {str(t["StudyInstanceUID"]) for t in _srs(a).values()} == (
        set(first.values()) | set(second.values())
    )

    # What a crash between sending and marking sent leads to: the same object again.
    _resend_all(env, pg_url)
    for orthanc in (a, b):
        assert len(orthanc.instances()) == 4, "a re-sent SR is stored once"


def _resend_all(env: dict[str, str], pg_url: str) -> None:
    """Send every delivered SR again, rebuilt from its outbox row."""
    from cxr_orient.dicomnet.delivery import report_for
    from cxr_orient.dicomnet.destinations import sender_for
    from cxr_orient.settings import Settings
    from db import crud
    from db.session import make_engine, session_scope

    values = {k.removeprefix("CXR_").lower(): v for k, v in env.items() if k.startswith("CXR_")}
    assert os.environ.get("CXR_RESULT_DESTINATIONS") is None
    settings = Settings.model_validate(values)
    engine = make_engine(pg_url)
    try:
        with session_scope(engine) as session:
            ids = [r.id for r in crud.outbox_rows(session)]
            work = crud.outbox_work(session, outbox_ids=ids)
    finally:
        engine.dispose()
    for item in work:
        sender = sender_for(item.destination, settings.results)
        try:
            sender.send(report_for(item, settings.intake))
        finally:
            sender.close()


def test_refused_for_good_then_retried_by_the_operator(
    sqlite_url: str, tmp_path: Path, configure: Callable[..., None]
) -> None:
    """STOW-RS to an Orthanc without DICOMweb: HTTP 404, failed for good (retrying the
    same request cannot help); the plugin enabled, ``outbox retry`` delivers it."""
    from cxr_orient.dicomnet.delivery import deliver_due
    from cxr_orient.dicomnet.sr import new_sr_uid
    from cxr_orient.settings import get_settings
    from db import crud
    from db.models import OrientationLabel
    from db.session import session_scope
    from tests.utils.env import migrate_from_template
    from tests.utils.factories import prediction_record, register_version

    archive = tmp_path / "archive"
    archive.mkdir()
    uids = _study(archive, "study3")
    orthanc = Orthanc(tmp_path / "orthanc", free_port(), free_port(), {}, dicomweb=False)
    orthanc.start()
    try:
        destination = f"dicomweb+http://127.0.0.1:{orthanc.http_port}/dicom-web"
        configure(
            database_url=sqlite_url,
            ingest_root=archive,
            data_dir=tmp_path / "data",
            result_destinations=destination,
            outbox_timeout_s=5,
        )
        migrate_from_template(sqlite_url)
        settings = get_settings()
        enqueued = run_cli(
            "enqueue",
            str(archive / "study3"),
            env=worker_env(
                database_url=sqlite_url, ingest_root=archive, data_dir=tmp_path / "data"
            ),
        )
        assert enqueued.returncode == 0, enqueued.stderr
        with session_scope() as session:
            model = register_version(session, "m-test")
            crud.activate_model_version(session, version=model, actor="t", reason="test")
            model_id = model.id
            rows = crud.results(session)
            ids = [
                crud.find_instance_by_uid(session, sop_instance_uid=str(r.sop_instance_uid))
                for r in rows
            ]
            records = [
                prediction_record(
                    instance_id=i.id,
                    label=OrientationLabel.lateral,
                    confidence=0.55,
                    p_frontal=0.45,
                    p_lateral=0.55,
                    header_agrees=False,
                    needs_review=True,
                    review_reason="low_confidence",
                    decode_ms=None,
                    inference_ms=None,
                    batch_size=None,
                )
                for i in ids
                if i is not None
            ]
            assert len(records) == len(uids) == 2
            crud.record_predictions(
                session,
                model_version_id=model_id,
                records=records,
                worker="test",
                result_destinations=[destination],
                new_report_uid=new_sr_uid,
            )
        counts = deliver_due(settings)
        assert (counts.claimed, counts.sent, counts.failed) == (2, 0, 2)
        with session_scope() as session:
            failed = crud.outbox_rows(session)
        assert {r.status.value for r in failed} == {"failed"}
        assert all("HTTP 404" in str(r.last_error) for r in failed)
        assert deliver_due(settings).claimed == 0, "failed rows are not retried by themselves"

        orthanc.stop()
        orthanc.dicomweb = True
        orthanc.start()
        env = worker_env(
            database_url=sqlite_url,
            ingest_root=archive,
            data_dir=tmp_path / "data",
            result_destinations=destination,
        )
        retried = run_cli("outbox", "retry", "--destination", destination, env=env)
        assert retried.returncode == 0, retried.stderr
        assert "2 failed rows pending again" in retried.stdout
        delivered = run_cli("outbox", "deliver", env=env)
        assert delivered.returncode == 0, delivered.stderr
        assert "2 sent" in delivered.stdout, delivered.stdout + delivered.stderr
        assert len(_srs(orthanc)) == 2
    finally:
        orthanc.stop()


class _HangingProxy:
    """A TCP-level fault injector in front of Orthanc's DICOMweb: the first POST is
    forwarded (Orthanc stores the SR) and then never answered, so the sender is caught
    between the PACS storing and the outbox recording ``sent``; later requests pass."""

    def __init__(self, target: str) -> None:
        import http.server
        import threading

        import httpx

        self.forwarded = threading.Event()
        self.release = threading.Event()
        self.posts = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")
                }
                answer = httpx.post(target + self.path, content=body, headers=headers, timeout=30)
                proxy.posts += 1
                if proxy.posts == 1:
                    proxy.forwarded.set()
                    proxy.release.wait(120)  # the sender is killed meanwhile
                    return
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", ""))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_worker_killed_between_pacs_storing_and_marking_sent(
    pg_url: str, broker_url: str, tmp_path: Path
) -> None:
    """kill -9 of the worker while the PACS has stored an SR and before ``sent`` is
    recorded: the row stays pending (leased), a new worker re-sends the same object
    after the lease, and the PACS holds it once."""
    from tests.utils.env import migrate_from_template
    from tests.utils.worker import WorkerProcess

    orthanc = start(tmp_path / "orthanc", free_port(), free_port(), {})
    proxy = _HangingProxy(orthanc.url)
    try:
        archive = tmp_path / "archive"
        archive.mkdir()
        sources = _study(archive, "study3")
        destination = f"dicomweb+http://127.0.0.1:{proxy.port}/dicom-web"
        env = worker_env(
            database_url=pg_url,
            broker_url=broker_url,
            ingest_root=archive,
            data_dir=tmp_path / "data",
            model_path=SHIPPED_MODEL,
            batch_max_wait_ms=100,
            result_destinations=destination,
            outbox_interval_s=1,
            outbox_timeout_s=60,
            outbox_lease_s=10,
        )
        migrate_from_template(pg_url)
        beat = ("-B", "-s", str(tmp_path / "beat"))
        first = WorkerProcess(env, tmp_path / "worker-1.log", extra_args=beat, cwd=REPO)
        try:
            first.wait_ready(180)
            enqueued = run_cli(
                "enqueue", str(archive / "study3"), "--wait", "--timeout", "240", env=env
            )
            assert enqueued.returncode == 0, enqueued.stderr + first.log()
            assert proxy.forwarded.wait(120), first.log()[-3000:]
            _wait(lambda: len(_srs(orthanc)) == 1, "Orthanc stored the first SR")
            first.kill_group()
        finally:
            first.stop()
        rows = _outbox(pg_url)
        assert [r["status"] for r in rows] == ["pending", "pending"], rows
        with running_worker(
            env, tmp_path / "worker-2.log", extra_args=beat, ready_timeout=180
        ) as second:
            _wait(
                lambda: [r["status"] for r in _outbox(pg_url)] == ["sent", "sent"],
                "both SRs sent after the lease",
                timeout=120,
            )
            assert "outbox" in second.log()
        rows = _outbox(pg_url)
        srs = _srs(orthanc)
        assert set(srs) == {r["uid"] for r in rows}, "the same SOPInstanceUIDs, stored once"
        assert len(orthanc.instances()) == 2
        assert proxy.posts >= 3, "the SR stored before the kill was sent again"
        referenced = {
            t["CurrentRequestedProcedureEvidenceSequence"][0][  # type: ignore[index]
                "ReferencedSeriesSequence"
            ][0]["ReferencedSOPSequence"][0]["ReferencedSOPInstanceUID"]
            for t in srs.values()
        }
        assert referenced == set(sources)
    finally:
        proxy.close()
        orthanc.stop()
