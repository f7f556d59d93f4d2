"""Fault injection for integration tests: private servers to break, processes to kill.

Each fault test gets its own redis-server and, when it stops the database, its
own PostgreSQL cluster (initdb on a temp dir, a free port), so stopping them
disturbs nobody else's tests.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy import Engine, func, select

from bench.services import free_port
from cxr_orient.settings import SHIPPED_MODEL

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), Path("/usr/bin"))
COUNTS_FILE_ENV = "CXR_FAULT_COUNTS_FILE"


def wait_until(
    condition: Callable[[], bool], *, timeout: float, poll: float = 0.2, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise TimeoutError(f"{what} not met after {timeout}s")


# --- redis ---------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server that keeps nothing on disk, like ours: a restart loses every key.
    It listens on 127.0.0.1 and on any ``also_bind`` addresses (network namespaces' host
    ends, tests/utils/netns.py)."""

    def __init__(self, port: int | None = None, also_bind: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.also_bind = tuple(also_bind)
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 12) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, password: str | None = None) -> None:
        auth = ["--requirepass", password] if password else []
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                *self.also_bind,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tempfile.gettempdir(),
                *auth,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_timeout=1, password=password)
        wait_until(lambda: _pings(client), timeout=20, what="redis-server up")

    def kill(self) -> None:
        """SIGKILL: every queued message is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def queue_length(self, queue: str, db: int = 12) -> int:
        return int(redis.Redis(port=self.port, db=db).llen(queue))


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


# --- postgresql ----------------------------------------------------------------------


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (trust auth) that a test may stop and start. It
    listens on 127.0.0.1 and on any ``also_listen`` addresses, trusting clients from
    ``trust_cidr`` there too (network namespaces, tests/utils/netns.py)."""

    def __init__(self, also_listen: Sequence[str] = (), trust_cidr: str | None = None) -> None:
        self.also_listen = tuple(also_listen)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cxr-pg-"))
        self.data = self.root / "data"
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self._as_postgres:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        if trust_cidr:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {trust_cidr} trust\n")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(PG_BIN / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        listen = ",".join(("127.0.0.1", *self.also_listen))
        options = f"-p {self.port} -k {self.root} -c listen_addresses={listen} -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


# --- worker processes ----------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def pool_child(parent_pid: int, log_path: Path, timeout: float = 60) -> int:
    """The live prefork pool process of a concurrency-1 worker.

    The embedded beat process is a child too, with the same command line; the pool
    process is the one that logged ``worker process <host>:<pid> serving model``.
    """
    found: list[int] = []

    def look() -> bool:
        children = set(child_pids(parent_pid))
        pids = [
            int(m)
            for m in re.findall(
                r"worker process [^:\s]+:(\d+) serving", log_path.read_text(errors="replace")
            )
        ]
        live = [p for p in pids if p in children and pid_alive(p)]
        if live:
            found.append(live[-1])
        return bool(live)

    wait_until(look, timeout=timeout, what="pool process")
    return found[0]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill9(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# --- what the database says ----------------------------------------------------------


@dataclass
class RunCounts:
    """The ledger of a fault run, as the database tells it."""

    fault: str
    sent: int
    done: int
    failed: int
    unfinished: int
    duplicated: int  # predictions beyond one per (instance, model version)
    lost: int  # sent but neither done, failed nor still queued/processing
    attempts_max: int
    extra: dict[str, Any]


def ledger(database_url: str, instance_ids: list[int], fault: str, **extra: Any) -> RunCounts:
    from db.models import Instance, InstanceStatus, Prediction
    from db.session import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Instance.id, Instance.status, Instance.attempts).where(
                    Instance.id.in_(instance_ids)
                )
            ).all()
            per_pair = conn.execute(
                select(Prediction.instance_id, Prediction.model_version_id, func.count())
                .where(Prediction.instance_id.in_(instance_ids))
                .group_by(Prediction.instance_id, Prediction.model_version_id)
            ).all()
    finally:
        engine.dispose()
    status = {i: InstanceStatus(s) for i, s, _ in rows}
    done = sum(s == InstanceStatus.done for s in status.values())
    failed = sum(s == InstanceStatus.failed for s in status.values())
    return RunCounts(
        fault=fault,
        sent=len(instance_ids),
        done=done,
        failed=failed,
        unfinished=len(status) - done - failed,
        duplicated=sum(n - 1 for _, _, n in per_pair),
        lost=len(set(instance_ids) - set(status)),
        attempts_max=max((a for _, _, a in rows), default=0),
        extra=extra,
    )


def record_counts(counts: RunCounts, fallback_dir: Path) -> None:
    """Append the counts to ``$CXR_FAULT_COUNTS_FILE`` (or the test's tmp dir) as JSON lines,
    and print them (visible with ``pytest -s``) for docs/reliability.md."""
    target = Path(os.environ.get(COUNTS_FILE_ENV) or fallback_dir / "fault-counts.jsonl")
    target.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(asdict(counts), sort_keys=True)
    with target.open("a") as handle:
        handle.write(line + "\n")
    print(f"\nFAULT-COUNTS {line}")


def instance_states(engine: Engine) -> dict[int, str]:
    """instance id -> status, through an engine the caller keeps for fast polling."""
    from db.models import Instance

    with engine.connect() as conn:
        return {i: str(s) for i, s in conn.execute(select(Instance.id, Instance.status))}


# --- the bad-input corpus --------------------------------------------------------------


@dataclass(frozen=True)
class BadFile:
    kind: str
    path: Path
    #: error_code once processing is over (at ingest or in the worker).
    code: str
    #: applied after enqueue, before any worker reads the file (vanish, change).
    after_enqueue: Callable[[], None] | None = None
    #: what the worker's decode step alone says, where ingest refuses the file first.
    decode_code: str | None = None


def build_bad_corpus(root: Path, outside: Path) -> list[BadFile]:
    """Broken files a hospital archive can send, each with the error code it must end with.

    ``root`` lies under CXR_INGEST_ROOT; ``outside`` does not (symlink target).
    Callers run with CXR_MAX_PIXELS=1_000_000 so the "huge" file is refused.
    """
    import numpy as np
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, JPEG2000Lossless

    from tests.utils.dicom_factory import make_dicom

    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:256, 0:256]
    pixels = (2048 + 1000 * np.sin(x / 20) * np.cos(y / 30)).astype(np.uint16)
    bad: list[BadFile] = []

    def dicom(name: str, **kwargs: Any) -> Path:
        return make_dicom(root / name, kwargs.pop("pixels", pixels), **kwargs)

    def edited(kind: str, code: str, edit: Callable[[pydicom.Dataset], None]) -> None:
        path = dicom(f"{kind}.dcm")
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)
        bad.append(BadFile(kind, path, code))

    (root / "not_dicom.dcm").write_text("MSH|^~\\&|an HL7 message, not an image\n" * 5)
    bad.append(BadFile("not_dicom", root / "not_dicom.dcm", "not_dicom"))
    (root / "random_bytes.dcm").write_bytes(np.random.default_rng(5).bytes(3000))
    bad.append(BadFile("random_bytes", root / "random_bytes.dcm", "not_dicom"))
    (root / "empty.dcm").write_bytes(b"")
    bad.append(BadFile("empty", root / "empty.dcm", "truncated"))

    size = len(dicom("source.dcm").read_bytes())
    for cut in (60, 131, 300, size // 2, size - 7):
        # A fresh source per cut: copies of one instance share its SOPInstanceUID and
        # ingest (idempotent by UID) would record only the first.
        source = dicom("source.dcm").read_bytes()
        path = root / f"truncated_{cut}.dcm"
        path.write_bytes(source[:cut])
        if cut == 300:  # cut inside the header: the UIDs ingest needs are gone
            bad.append(
                BadFile(
                    "truncated in the header (byte 300)",
                    path,
                    "missing_attribute",
                    decode_code="no_pixel_data",
                )
            )
        else:
            bad.append(BadFile(f"truncated at byte {cut}", path, "truncated"))
    (root / "source.dcm").unlink()

    edited("no_pixel_data", "no_pixel_data", lambda ds: delattr(ds, "PixelData"))
    edited("rows_zero", "invalid_attribute", lambda ds: setattr(ds, "Rows", 0))

    def absurd_size(ds: pydicom.Dataset) -> None:
        ds.Rows = ds.Columns = 65535

    edited("rows_columns_absurd", "image_too_large", absurd_size)
    edited("bits_stored_absurd", "invalid_attribute", lambda ds: setattr(ds, "BitsStored", 40))
    edited(
        "pixel_data_short",
        "truncated",
        lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 3]),
    )

    def mpeg2(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")
        ds.PixelData = encapsulate([ds.PixelData])

    edited("unsupported_transfer_syntax", "unsupported_transfer_syntax", mpeg2)

    def lying_j2k(ds: pydicom.Dataset) -> None:  # claims JPEG 2000, holds raw pixels
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([ds.PixelData])

    edited("lying_transfer_syntax", "decode_failed", lying_j2k)
    edited("multi_frame", "unsupported_image", lambda ds: setattr(ds, "NumberOfFrames", 2))
    edited("rgb", "unsupported_image", lambda ds: setattr(ds, "PhotometricInterpretation", "RGB"))
    edited(
        "ybr", "unsupported_image", lambda ds: setattr(ds, "PhotometricInterpretation", "YBR_FULL")
    )
    edited("one_bit", "unsupported_image", lambda ds: setattr(ds, "BitsStored", 1))
    huge = dicom("huge.dcm", pixels=np.zeros((1100, 1000), dtype=np.uint16))
    bad.append(BadFile("huge (1.1 Mpx > CXR_MAX_PIXELS)", huge, "image_too_large"))

    target = make_dicom(outside / "elsewhere.dcm", pixels)
    link = root / "symlink_outside.dcm"
    link.symlink_to(target)
    bad.append(BadFile("symlink outside CXR_INGEST_ROOT", link, "path_not_allowed"))
    # The real file sits in a hidden folder (ingest skips those when walking) so only the
    # '..' spelling of its path is ever enqueued.
    (root / "sub").mkdir(exist_ok=True)
    (root / ".hidden").mkdir(exist_ok=True)
    make_dicom(root / ".hidden" / "dotdot.dcm", pixels)
    bad.append(
        BadFile(
            "path with '..'", root / "sub" / ".." / ".hidden" / "dotdot.dcm", "path_not_allowed"
        )
    )

    vanish = dicom("vanishes.dcm")
    bad.append(BadFile("vanishes after enqueue", vanish, "file_missing", vanish.unlink))
    changed = dicom("changed.dcm")

    def rewrite() -> None:
        make_dicom(changed, pixels[::-1].copy())

    bad.append(BadFile("changed after enqueue", changed, "file_changed", rewrite))
    return bad


def smoke_checkpoint(folder: Path, source: Path = SHIPPED_MODEL) -> Path:
    """A private copy of a checkpoint (default: the shipped one) and its card, so a
    test may alter or delete it without touching the original."""
    from cxr_orient.modelstore import card_path_for

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    shutil.copyfile(source, target)
    shutil.copyfile(card_path_for(source), card_path_for(target))
    return target
