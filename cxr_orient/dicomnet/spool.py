"""The spool: where instances received over the network are written before they are
recorded, so that nothing acknowledged to a sender can be lost.

Every network source (``listen``, STOW-RS, ``pull``) writes through :func:`write_instance`
and then records the returned path through :mod:`cxr_orient.ingest`, like any file. The
spool lies under ``CXR_INGEST_ROOT`` (``CXR_SPOOL_DIR``, default ``<ingest root>/spool``),
so the checked read that the worker and training use accepts its files.

A write is durable before it returns: the bytes go to a temporary name in the target
folder, are fdatasynced, renamed into place, and the folder is fsynced. The final name
carries the first 16 hex digits of the bytes' SHA-256, so a re-send of the same bytes
lands on the same file (written once), while other bytes under a known SOPInstanceUID
(a corrected re-send or a UID clash) get a file of their own and never overwrite the
bytes an earlier answer was made on. Layout::

    <spool>/<StudyInstanceUID>/<SOPInstanceUID>.<sha256[:16]>.dcm

UIDs are checked against the DICOM UID grammar (digits and dots, at most 64 characters)
before they name anything on disk; a UID that does not parse is replaced by ``invalid-``
and a hash of it, so no received value can escape the spool.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cxr_orient.settings import Settings

__all__ = [
    "PARTIAL_PATTERNS",
    "SpooledFile",
    "adopt_file",
    "free_mb",
    "remove_stale_partials",
    "safe_uid_name",
    "spool_dir",
    "stale_partial_s",
    "write_instance",
]

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def spool_dir(settings: Settings) -> Path:
    """The spool folder (created on first use)."""
    return settings.intake.effective_spool_dir


def safe_uid_name(uid: str) -> str:
    """``uid`` itself when it is a well-formed DICOM UID, else ``invalid-<sha256[:16]>``."""
    uid = uid.strip().rstrip("\x00")
    if len(uid) <= 64 and _UID.match(uid):
        return uid
    return "invalid-" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:16]


def free_mb(settings: Settings) -> float:
    """Free space, in MiB, on the file system that holds the spool."""
    folder = spool_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(folder).free / (1024 * 1024)


@dataclass(frozen=True)
class SpooledFile:
    """A received instance on disk: where, its SHA-256, and whether this call wrote it
    (False: the same bytes were already spooled)."""

    path: Path
    sha256: str
    size: int
    written: bool


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_instance(
    data: bytes, *, study_instance_uid: str, sop_instance_uid: str, settings: Settings
) -> SpooledFile:
    """Write one received instance's bytes (a whole DICOM file, preamble and file meta
    included) to the spool durably, and return where it lies."""
    digest = hashlib.sha256(data).hexdigest()
    folder = spool_dir(settings) / safe_uid_name(study_instance_uid)
    final = folder / f"{safe_uid_name(sop_instance_uid)}.{digest[:16]}.dcm"
    if final.is_file() and final.stat().st_size == len(data):
        return SpooledFile(final, digest, len(data), written=False)
    created = not folder.is_dir()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            # fdatasync: the data and the size, what reading the file back needs (the
            # times fsync would add are not); the rename is made durable by the
            # folder's fsync below.
            os.fdatasync(out.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    if created:
        _fsync_dir(folder.parent)
    return SpooledFile(final, digest, len(data), written=True)


def adopt_file(
    received: Path,
    *,
    sha256: str,
    study_instance_uid: str,
    sop_instance_uid: str,
    settings: Settings,
) -> SpooledFile:
    """Move a whole received file (``received``, on the spool's file system: the
    listener receives into ``<spool>/.receiving``) to its place in the spool, durably,
    as :func:`write_instance` would have written its bytes (``sha256``: of those bytes).
    The same bytes already spooled: ``received`` is deleted and the spooled file kept."""
    size = received.stat().st_size
    folder = spool_dir(settings) / safe_uid_name(study_instance_uid)
    final = folder / f"{safe_uid_name(sop_instance_uid)}.{sha256[:16]}.dcm"
    if final.is_file() and final.stat().st_size == size:
        received.unlink(missing_ok=True)
        return SpooledFile(final, sha256, size, written=False)
    created = not folder.is_dir()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(received, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(received, final)
    _fsync_dir(folder)
    if created:
        _fsync_dir(folder.parent)
    return SpooledFile(final, sha256, size, written=True)


#: Partial files: a write in progress (:func:`write_instance`) and a dataset being
#: received (the listener's ``.receiving`` folder).
PARTIAL_PATTERNS = ("*/.incoming-*.tmp", ".receiving/.receiving-*.tmp")


def stale_partial_s(settings: Settings) -> float:
    """How old (last written) a partial file must be to be nobody's: a transfer in
    progress writes its file at least every ``CXR_DICOM_IDLE_TIMEOUT_S`` (else it is
    aborted), and a spool write takes seconds."""
    return 2 * settings.dicom.dicom_idle_timeout_s + 30


def remove_stale_partials(settings: Settings, *, now: float | None = None) -> int:
    """Delete partial files of interrupted writes and transfers (PHI: a part of a
    received instance) last written longer than :func:`stale_partial_s` ago; returns
    how many."""
    folder = spool_dir(settings)
    if not folder.is_dir():
        return 0
    now = time.time() if now is None else now
    removed = 0
    for pattern in PARTIAL_PATTERNS:
        for partial in folder.glob(pattern):
            try:
                if now - partial.stat().st_mtime > stale_partial_s(settings):
                    partial.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
    return removed
