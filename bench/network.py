"""Network ingest beside the folder path, in the same run, for two corpora (the mixed
one: uncompressed, RLE, JPEG-LS, JPEG 2000 and JPEG as hospitals send them; and the
uncompressed files alone, the largest): instances/s received and recorded by a real
``cxr-orient listen`` from N concurrent dcmtk ``dcmsend`` processes, against ``enqueue``
of the same files from a folder (both record through :mod:`cxr_orient.ingest` and send
to the same broker).

The spool's disk is measured in the same run: files written, fdatasynced and renamed as
the spool does it, by as many writers as there are senders, and the raw synchronous
write bandwidth (``dd oflag=dsync``, 4 MiB blocks): nothing is acknowledged before its
bytes are durable, so on a slow disk that bound, not the listener, is the figure to
compare.

The listener is timed from the first sender's start to the moment the database holds a
row for every file it received (not just the acknowledgement), so the figure is what the
worker could be fed.

End to end (:func:`end_to_end`): the mixed corpus sent by dcmsend to ``listen``, held
until each study is quiet (``CXR_STUDY_QUIET_S=1``), classified by a real
``celery -A worker worker``, and each answer's SR stored by C-STORE in a real Orthanc:
images/s from the first send to the last SR visible in Orthanc's REST API.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.corpus import UNCOMPRESSED, CorpusItem, clone_with_new_uids

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
#: Only the syntaxes every sender and the worker handle without a codec plugin of their own.
NETWORK_SYNTAXES = ("explicit-le", "rle", "jpeg-ls", "j2k-lossless", "j2k-lossy", "jpeg-baseline")


def _copies(
    items: Sequence[CorpusItem],
    target: Path,
    count: int,
    tag: str,
    syntaxes: Sequence[str] = NETWORK_SYNTAXES,
) -> list[Path]:
    """``count`` files cloned from ``items`` of ``syntaxes`` with fresh UIDs, two per
    study."""
    chosen = [i for i in items if i.syntax in syntaxes] or list(items)
    out = []
    for k in range(count):
        study = f"1.2.826.0.1.3680043.10.4.{_digits(tag)}.{k // 2}"
        out.append(
            clone_with_new_uids(
                chosen[k % len(chosen)].path,
                target / f"{k // 2:04d}" / f"{k % 2}.dcm",
                study_uid=study,
                patient_id=f"N{k // 2}",
            )
        )
    return out


def _digits(tag: str) -> int:
    """A stable number for ``tag`` (UIDs are digits; ``hash`` of a str varies per run)."""
    return int.from_bytes(tag.encode()[:6].ljust(6, b"0"), "big") % 10**8


def _recorded_under(prefix: Path) -> int:
    from db import crud
    from db.session import session_scope

    with session_scope() as session:
        return len(crud.recorded_paths_under(session, prefix=f"{prefix}/"))


def _start_listener(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "listen", "--port", "0"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"listening on [0-9.]+:(\d+)", log_path.read_text(errors="replace"))
        if found:
            return process, int(found.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"listener did not start:\n{log_path.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def durable_write_mb_per_s(
    folder: Path, *, writers: int = 1, files: int = 24, size: int = 4 << 20
) -> float:
    """The spool disk's bound: MB/s of ``files`` files written as the spool writes them
    (write, fdatasync, rename, folder fsync) by ``writers`` threads at once (the
    listener's concurrent associations)."""
    from concurrent.futures import ThreadPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)

    def write(k: int) -> None:
        temporary, final = folder / f".probe-{k}.tmp", folder / f"probe-{k}.bin"
        with temporary.open("wb") as out:
            out.write(data)
            out.flush()
            os.fdatasync(out.fileno())
        os.replace(temporary, final)
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=writers) as pool:
        list(pool.map(write, range(files)))
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    return files * size / 2**20 / elapsed


def raw_dsync_mb_per_s(folder: Path, *, megabytes: int = 96) -> float | None:
    """``dd if=<random> of=<file> bs=4M oflag=dsync``: the disk's raw synchronous write
    bandwidth in MB/s (MiB), one writer; None without dd."""
    dd = shutil.which("dd")
    if dd is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "random.bin"
    source.write_bytes(os.urandom(megabytes << 20))
    start = time.perf_counter()
    subprocess.run(
        [
            dd,
            f"if={source}",
            f"of={folder / 'dsync.bin'}",
            "bs=4M",
            f"count={megabytes // 4}",
            "oflag=dsync",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    return megabytes / elapsed


def _send_all(
    dcmsend: str, port: int, files: Sequence[Path], senders: int, called: str
) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [
                dcmsend,
                "-aet",
                f"BENCH{n}",
                "-aec",
                called,
                "--decompress-never",
                "127.0.0.1",
                str(port),
                *map(str, files[n::senders]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in range(senders)
    ]


def _one_corpus(
    items: Sequence[CorpusItem],
    root: Path,
    *,
    name: str,
    syntaxes: Sequence[str],
    files: int,
    senders: int,
    dcmsend: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The folder path, then the listener, on ``files`` clones of ``syntaxes``."""
    from cxr_orient.ingest import enqueue_paths
    from cxr_orient.settings import get_settings
    from worker.dispatch import send_instances

    settings = get_settings()
    folder = _copies(items, root / f"{name}-folder", files, f"{name}f", syntaxes)
    sent = _copies(items, root / f"{name}-send", files, f"{name}s", syntaxes)
    megabytes = sum(p.stat().st_size for p in sent) / 2**20

    say(f"network ingest ({name}): enqueue of {files} files from a folder")
    start = time.perf_counter()
    report = enqueue_paths([root / f"{name}-folder"], send=send_instances, settings=settings)
    folder_s = time.perf_counter() - start
    assert len(report.queued) == len(folder), "the folder path must record every file"

    say(f"network ingest ({name}): {files} instances from {senders} concurrent dcmsend")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CXR_SPOOL_MIN_FREE_MB": "64"}
    spool = settings.intake.effective_spool_dir
    before = _recorded_under(spool)
    listener, port = _start_listener(env, root / f"listen-{name}.log")
    try:
        start = time.perf_counter()
        processes = _send_all(dcmsend, port, sent, senders, settings.dicom.dicom_ae_title)
        for process in processes:
            process.wait(timeout=600)
        acknowledged_s = time.perf_counter() - start
        deadline = time.monotonic() + 300
        while _recorded_under(spool) - before < files and time.monotonic() < deadline:
            time.sleep(0.05)
        recorded_s = time.perf_counter() - start
        recorded = _recorded_under(spool) - before
    finally:
        _stop(listener)
    disk = durable_write_mb_per_s(spool / ".disk-probe", writers=senders)
    return {
        "syntaxes": list(dict.fromkeys(i.syntax for i in items if i.syntax in syntaxes)),
        "files": files,
        "megabytes": round(megabytes, 1),
        "spool_disk_durable_mb_per_s": disk,
        "disk_bound_instances_per_s": disk / (megabytes / files),
        "senders": senders,
        "folder_instances_per_s": files / folder_s,
        "listen_acknowledged_per_s": files / acknowledged_s,
        "listen_recorded_per_s": recorded / recorded_s,
        "listen_recorded": recorded,
        "listen_megabytes_per_s": megabytes / recorded_s,
        "senders_exit": [p.returncode for p in processes],
    }


def network_ingest(
    items: Sequence[CorpusItem], root: Path, *, files: int, senders: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """The folder path and the listener on ``files`` instances each (same corpus, fresh
    UIDs), the mixed corpus (the top-level figures) and the uncompressed files alone,
    with the disk's bounds measured in the same run; the process's CXR_* settings
    (database, broker, ingest root) must point at ``root``'s bench database already."""
    dcmsend = shutil.which("dcmsend")
    if dcmsend is None:
        return {"skipped": "dcmsend is not installed (apt-get install dcmtk)"}
    out = _one_corpus(
        items,
        root,
        name="mixed",
        syntaxes=NETWORK_SYNTAXES,
        files=files,
        senders=senders,
        dcmsend=dcmsend,
        say=say,
    )
    out["uncompressed"] = _one_corpus(
        items,
        root,
        name="uncompressed",
        syntaxes=[s for s in UNCOMPRESSED if s in NETWORK_SYNTAXES],
        files=files,
        senders=senders,
        dcmsend=dcmsend,
        say=say,
    )
    out["raw_dsync_mb_per_s"] = raw_dsync_mb_per_s(root / ".dd-probe")
    return out


def _orthanc_instances(orthanc: Any) -> int:
    try:
        return int(orthanc.get("/statistics")["CountInstances"])
    except Exception:  # Orthanc busy: ask again
        return -1


def end_to_end(
    items: Sequence[CorpusItem],
    root: Path,
    *,
    files: int,
    senders: int,
    env: dict[str, str],
    worker: Callable[[dict[str, str]], Any],
    say: Callable[[str], None],
    timeout_s: float = 900,
) -> dict[str, Any]:
    """dcmsend -> ``listen`` -> worker -> SR in Orthanc for ``files`` instances of the mixed
    corpus: images/s from the first send to the last SR visible in Orthanc, after a
    warm-up (one study per sender, untimed: the pool processes load the model on their
    first batch). ``worker`` starts a ready worker with the env it is given (a context
    manager); the database and broker in ``env`` must hold nothing else."""
    from bench.orthanc import OrthancMissingError, free_port, start

    dcmsend = shutil.which("dcmsend")
    if dcmsend is None:
        return {"skipped": "dcmsend is not installed (apt-get install dcmtk)"}
    sent = _copies(items, root / "e2e-send", files, "e2e")
    # One study first, untimed: each pool process loads the model on its first batch.
    warm = _copies(items, root / "e2e-warm", 2 * senders, "e2e-warm")
    megabytes = sum(p.stat().st_size for p in sent) / 2**20
    called = env.get("CXR_DICOM_AE_TITLE", "CXR_ORIENT")
    try:
        orthanc = start(
            root / "orthanc", free_port(), free_port(), {"cxr": [called, "127.0.0.1", free_port()]}
        )
    except OrthancMissingError as exc:
        return {"skipped": str(exc)}
    quiet_s = 1.0
    from cxr_orient.settings import get_settings

    spool = get_settings().intake.effective_spool_dir  # this process is configured like env
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    env = {
        **env,
        "PYTHONUNBUFFERED": "1",
        "CXR_SPOOL_MIN_FREE_MB": "64",
        "CXR_STUDY_QUIET_S": str(quiet_s),
        "CXR_OUTBOX_INTERVAL_S": "1",
        "CXR_RESULT_DESTINATIONS": f"dicom://ORTHANC@127.0.0.1:{orthanc.dicom_port}",
    }
    try:
        with worker(env):
            say(f"end to end: {files} instances dcmsend -> listen -> worker -> SR in Orthanc")
            listener, port = _start_listener(env, root / "listen-e2e.log")
            try:
                for process in _send_all(dcmsend, port, warm, senders, called):
                    process.wait(timeout=600)
                deadline = time.monotonic() + timeout_s
                while _orthanc_instances(orthanc) < len(warm) and time.monotonic() < deadline:
                    time.sleep(0.2)
                start_s = time.perf_counter()
                processes = _send_all(dcmsend, port, sent, senders, called)
                for process in processes:
                    process.wait(timeout=600)
                sent_s = time.perf_counter() - start_s
                # A sender that failed (an association timed out on a starved machine)
                # sent fewer: wait for the SRs of what the listener received.
                expected = files
                if any(p.returncode != 0 for p in processes):
                    time.sleep(5)
                    expected = _recorded_under(spool) - len(warm)
                deadline = time.monotonic() + timeout_s
                stored = 0
                while time.monotonic() < deadline:
                    stored = _orthanc_instances(orthanc) - len(warm)
                    if stored >= expected:
                        break
                    time.sleep(0.2)
                last_sr_s = time.perf_counter() - start_s
            finally:
                _stop(listener)
    finally:
        orthanc.stop()
    return {
        "files": files,
        "megabytes": round(megabytes, 1),
        "senders": senders,
        "study_quiet_s": quiet_s,
        "received": expected,
        "srs_stored": stored,
        "complete": stored >= files,
        "sent_s": sent_s,
        "last_sr_s": last_sr_s,
        "images_per_s": stored / last_sr_s,
        "senders_exit": [p.returncode for p in processes],
    }
