"""Network ingest beside the folder path, in the same run: instances/s received and
recorded by a real ``cxr-orient listen`` from N concurrent dcmtk ``dcmsend`` processes,
against ``enqueue`` of the same corpus from a folder (both record through
:func:`cxr_orient.ingest.enqueue_paths` and send to the same broker).

The spool's disk is measured too (files written, fsynced and renamed as the spool does
it): nothing is acknowledged before its bytes are durable, so on a slow disk with large
uncompressed instances that bound, not the listener, is the figure to compare.

The listener is timed from the first sender's start to the moment the database holds a
row for every file it received (not just the acknowledgement), so the figure is what the
worker could be fed.
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

from bench.corpus import CorpusItem, clone_with_new_uids

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
#: Only the syntaxes every sender and the worker handle without a codec plugin of their own.
NETWORK_SYNTAXES = ("explicit-le", "rle", "jpeg-ls", "j2k-lossless", "j2k-lossy",
                    "jpeg-baseline")


def _copies(items: Sequence[CorpusItem], target: Path, count: int, tag: str) -> list[Path]:
    """``count`` files cloned from ``items`` with fresh UIDs, two per study."""
    chosen = [i for i in items if i.syntax in NETWORK_SYNTAXES] or list(items)
    out = []
    for k in range(count):
        study = f"1.2.826.0.1.3680043.10.4.{abs(hash(tag)) % 10**8}.{k // 2}"
        out.append(clone_with_new_uids(chosen[k % len(chosen)].path,
                                       target / f"{k // 2:04d}" / f"{k % 2}.dcm",
                                       study_uid=study, patient_id=f"N{k // 2}"))
    return out


def _recorded_under(prefix: Path) -> int:
    from db import crud
    from db.session import session_scope

    with session_scope() as session:
        return len(crud.recorded_paths_under(session, prefix=f"{prefix}/"))


def _start_listener(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "cxr_orient.cli", "listen", "--port", "0"], env=env, cwd=REPO,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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


def durable_write_mb_per_s(folder: Path, *, files: int = 24, size: int = 4 << 20) -> float:
    """The spool disk's bound: MB/s of files written as the spool writes them (write,
    fsync, rename, folder fsync), one after another."""
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    start = time.perf_counter()
    for k in range(files):
        temporary, final = folder / f".probe-{k}.tmp", folder / f"probe-{k}.bin"
        with temporary.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, final)
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    return files * size / 2**20 / elapsed


def network_ingest(items: Sequence[CorpusItem], root: Path, *, files: int, senders: int,
                   say: Callable[[str], None]) -> dict[str, Any]:
    """The folder path and the listener on ``files`` instances each (same corpus, fresh
    UIDs); the process's CXR_* settings (database, broker, ingest root) must point at
    ``root``'s bench database already."""
    from cxr_orient.ingest import enqueue_paths
    from cxr_orient.settings import get_settings
    from worker.dispatch import send_instances

    dcmsend = shutil.which("dcmsend")
    if dcmsend is None:
        return {"skipped": "dcmsend is not installed (apt-get install dcmtk)"}
    settings = get_settings()
    folder = _copies(items, root / "net-folder", files, "folder")
    sent = _copies(items, root / "net-send", files, "send")
    megabytes = sum(p.stat().st_size for p in sent) / 2**20

    say(f"network ingest: enqueue of {files} files from a folder")
    start = time.perf_counter()
    report = enqueue_paths([root / "net-folder"], send=send_instances, settings=settings)
    folder_s = time.perf_counter() - start
    assert len(report.queued) == len(folder), "the folder path must record every file"

    say(f"network ingest: {files} instances from {senders} concurrent dcmsend")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CXR_SPOOL_MIN_FREE_MB": "64"}
    listener, port = _start_listener(env, root / "listen.log")
    spool = settings.effective_spool_dir
    try:
        start = time.perf_counter()
        processes = [subprocess.Popen(
            [dcmsend, "-aet", f"BENCH{n}", "-aec", settings.dicom_ae_title,
             "--decompress-never", "127.0.0.1", str(port), *map(str, sent[n::senders])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in range(senders)]
        for process in processes:
            process.wait(timeout=600)
        acknowledged_s = time.perf_counter() - start
        deadline = time.monotonic() + 300
        while _recorded_under(spool) < files and time.monotonic() < deadline:
            time.sleep(0.05)
        recorded_s = time.perf_counter() - start
        recorded = _recorded_under(spool)
    finally:
        _stop(listener)
    disk = durable_write_mb_per_s(spool / ".disk-probe")
    return {
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
