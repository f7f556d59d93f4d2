"""Security and bad input against real processes.

- Only JSON crosses the queue: a pickle message is refused by a real worker and
  its payload never runs; a task for an unknown id or with a path as argument is
  dropped with a log line.
- A checkpoint whose bytes differ from the registered sha256 is refused.
- Passwords in CXR_DATABASE_URL / CXR_BROKER_URL never reach `cxr-orient status`,
  CLI output or worker logs; PatientID values never reach worker logs at INFO.
- The whole bad-input corpus goes through a real worker beside good files: each
  bad file ends failed with its own error code, every good batch-mate is done.
- docker/audit-role.sql gives a role that can SELECT and cannot write.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from cxr_orient.settings import get_settings
from db.models import Instance
from db.session import make_engine
from tests.integration.test_faults import make_corpus
from tests.utils.faults import (
    PrivateRedis,
    build_bad_corpus,
    ledger,
    private_postgres,
    record_counts,
    smoke_checkpoint,
    wait_until,
)
from tests.utils.worker import WorkerProcess, run_cli, worker_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DB_PASSWORD = "Db-Pa55-wOrd-7731"
REDIS_PASSWORD = "Br0ker-Pa55-9917"
PATIENT_MARK = "PHI-PATIENT-4711"


class _Exploit:
    """Unpickling this runs code; a worker that accepted pickle would create the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def _states(url: str) -> dict[str, tuple[str, str | None]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Instance.file_path, Instance.status, Instance.error_code))
            return {p: (str(s), c) for p, s, c in rows}
    finally:
        engine.dispose()


def test_bad_corpus_through_real_worker_without_secrets_or_phi_in_logs(
    pg_url: str, tmp_path: Path
) -> None:
    from tests.utils.env import migrate_from_template

    migrate_from_template(pg_url)
    # trust auth ignores the password, but it is in the URL the processes see.
    secret_db_url = pg_url.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
    assert DB_PASSWORD in secret_db_url
    redis = PrivateRedis()
    redis.start(REDIS_PASSWORD)
    root = tmp_path / "archive"
    good = make_corpus(root / "good", 12, prefix="good")
    for path in good:  # PatientID values that must never show in logs
        import pydicom

        ds = pydicom.dcmread(path)
        ds.PatientID = f"{PATIENT_MARK}-{path.stem}"
        ds.PatientName = "Doe^Jane"
        ds.save_as(path)
    bad = build_bad_corpus(root / "bad", tmp_path / "outside")
    env = worker_env(
        database_url=secret_db_url,
        broker_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis.port}/14",
        ingest_root=root,
        model_path=smoke_checkpoint(tmp_path / "model"),
        data_dir=tmp_path / "data",
        batch_size=8,
        batch_max_wait_ms=100,
        max_pixels=1_000_000,
        decode_threads=1,
    )
    try:
        # Enqueue with no worker running, so files can vanish / change before decoding.
        dotdot = [str(b.path) for b in bad if ".." in b.path.parts]
        enqueued = run_cli("enqueue", str(root), *dotdot, env=env, timeout=120)
        assert enqueued.returncode == 0, enqueued.stderr
        for item in bad:
            if item.after_enqueue is not None:
                item.after_enqueue()
        worker = WorkerProcess(env, tmp_path / "worker.log", name="test", cwd=REPO)
        try:
            worker.wait_ready()
            wait_until(
                lambda: all(s in {"done", "failed"} for s, _ in _states(pg_url).values()),
                timeout=90,
                poll=0.5,
                what="every instance finished",
            )
            assert worker.process.poll() is None, "the worker survived the corpus"
            status = run_cli("status", env=env)
            results = run_cli("results", "--format", "json", env=env)
        finally:
            worker.stop()
        log = worker.log()
    finally:
        redis.kill()

    states = _states(pg_url)
    by_path = {str(b.path): b for b in bad}
    mismatched = {
        b.kind: states.get(str(b.path))
        for b in bad
        if states.get(str(b.path)) != ("failed", b.code)
    }
    assert not mismatched, mismatched
    good_states = Counter(states[str(p)][0] for p in good)
    assert good_states == {"done": len(good)}, good_states
    assert len(states) == len(good) + len(bad), set(states) - {str(p) for p in good} - set(by_path)
    rows = json.loads(results.stdout)
    assert all(r["error"] for r in rows if r["status"] == "failed")

    # Secrets and PHI.
    outputs = {
        "status": status.stdout + status.stderr,
        "enqueue": enqueued.stdout + enqueued.stderr,
        "worker log": log,
    }
    for name, text in outputs.items():
        assert DB_PASSWORD not in text, name
        assert REDIS_PASSWORD not in text, name
    assert "***" in status.stdout or "**" in status.stdout, status.stdout
    assert PATIENT_MARK not in log and "Doe^Jane" not in log

    engine = make_engine(pg_url)
    with engine.connect() as conn:
        ids = list(conn.scalars(select(Instance.id)))
    engine.dispose()
    counts = ledger(
        pg_url,
        ids,
        "bad-input corpus with good batch-mates, real worker",
        bad_kinds=len(bad),
        by_code=dict(Counter(b.code for b in bad)),
    )
    record_counts(counts, tmp_path)
    assert (counts.done, counts.failed, counts.duplicated) == (len(good), len(bad), 0)


def test_queue_accepts_json_ids_only(pg_url: str, tmp_path: Path) -> None:
    from celery import Celery

    from tests.utils.env import migrate_from_template

    migrate_from_template(pg_url)
    redis = PrivateRedis()
    redis.start()
    root = tmp_path / "archive"
    make_corpus(root, 2, prefix="sec")
    env = worker_env(
        database_url=pg_url,
        broker_url=redis.url(15),
        ingest_root=root,
        model_path=smoke_checkpoint(tmp_path / "model"),
        data_dir=tmp_path / "data",
        batch_size=4,
        batch_max_wait_ms=100,
        decode_threads=1,
    )
    marker = tmp_path / "pwned"
    sender = Celery("attacker", broker=redis.url(15))
    sender.conf.update(accept_content=["json", "pickle"], task_default_queue="cxr-orient")
    try:
        worker = WorkerProcess(env, tmp_path / "worker.log", name="test", cwd=REPO)
        try:
            worker.wait_ready()
            sender.send_task("cxr_orient.classify", args=[_Exploit(marker)], serializer="pickle")
            sender.send_task("cxr_orient.classify", args=[987654], serializer="json")
            sender.send_task("cxr_orient.classify", args=["../../etc/passwd"], serializer="json")
            wait_until(
                lambda: (
                    "unknown instance id 987654" in worker.log()
                    and "malformed classify message" in worker.log()
                    and "pickle" in worker.log()
                ),
                timeout=60,
                what="three refusals logged",
            )
            # The worker still works after the attempts.
            enqueued = run_cli("enqueue", str(root), "--wait", "--timeout", "60", env=env)
            assert enqueued.returncode == 0, enqueued.stdout + enqueued.stderr + worker.log()
            assert worker.process.poll() is None
        finally:
            worker.stop()
        log = worker.log()
    finally:
        redis.kill()
    assert not marker.exists(), "a pickle payload was executed"
    assert "Refusing to deserialize" in log or "ContentDisallowed" in log, log[-3000:]
    assert Counter(s for s, _ in _states(pg_url).values()) == {"done": 2}


def test_checkpoint_sha256_mismatch_refused(
    tmp_path: Path, configure: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxr_orient import registry
    from cxr_orient.errors import ModelError, ModelIntegrityError
    from cxr_orient.registry import current_model, load_version
    from db.session import session_scope
    from tests.utils.env import migrate_from_template

    checkpoint = smoke_checkpoint(tmp_path / "model")
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    configure(database_url=url, model_path=checkpoint, data_dir=tmp_path)  # type: ignore[operator]
    migrate_from_template(url)
    from cxr_orient.registry import ensure_active_model

    with session_scope() as session:
        version = ensure_active_model(session, get_settings().inference)
    # Nothing loaded in this process before: an earlier test's model of the same row id,
    # name and bytes (the smoke checkpoint is deterministic) would be served from memory.
    monkeypatch.setattr(registry, "_LOADED", None)
    with checkpoint.open("ab") as handle:  # tampered after registration
        handle.write(b"\0tampered")
    with pytest.raises(ModelIntegrityError, match=r"sha256|SHA-256|hash"):
        load_version(version, get_settings().inference)
    with pytest.raises(ModelError):
        current_model(get_settings().inference)


def test_audit_role_reads_and_cannot_write(tmp_path: Path) -> None:
    """docker/audit-role.sql on a private PostgreSQL cluster (roles are cluster-wide)."""
    from db.migrate import upgrade

    script = (REPO / "docker" / "audit-role.sql").read_text()
    with private_postgres() as pg:
        url = pg.create_database("cxr")
        upgrade(url)
        with psycopg.connect(pg.dsn("cxr"), autocommit=True) as owner:
            owner.execute(
                "INSERT INTO studies (study_instance_uid, patient_id, created_at) "
                "VALUES ('1.2.3', 'PATIENT-1', now())"
            )
            owner.execute(script)
            owner.execute(script)  # idempotent: safe to re-run after migrations
            owner.execute("CREATE ROLE alice LOGIN IN ROLE cxr_audit")
            owner.execute("CREATE ROLE bob LOGIN IN ROLE cxr_audit_deid")
        alice = pg.dsn("cxr").replace("postgres@", "alice@")
        with psycopg.connect(alice, autocommit=True) as conn:
            assert conn.execute("SELECT patient_id FROM studies").fetchall() == [("PATIENT-1",)]
            for table in ("instances", "predictions", "model_versions", "model_events", "labels"):
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            for statement in (
                "INSERT INTO studies (study_instance_uid, created_at) VALUES ('9', now())",
                "UPDATE studies SET patient_id = 'x'",
                "DELETE FROM studies",
                "CREATE TABLE sneaky (id int)",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        bob = pg.dsn("cxr").replace("postgres@", "bob@")
        with psycopg.connect(bob, autocommit=True) as conn:
            assert conn.execute("SELECT study_instance_uid FROM studies").fetchall() == [("1.2.3",)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT patient_id FROM studies")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT file_path FROM instances")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO labels (instance_id, label) VALUES (1, 'frontal')")
