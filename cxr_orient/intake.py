"""The checked file read: the one rule by which any part of cxr-orient reads an image file.

Ingest (recording a file), the worker (classifying it) and training (learning from a
labelled one) all read files through here, so they refuse the same files for the same
reasons:

1. **Confinement**: no ``..`` in the path, and the path with every symlink followed must
   lie under ``CXR_INGEST_ROOT`` (:func:`resolve_ingest_path`).
2. **Bounded read**: a FIFO, device or socket is refused before a byte is read (it could
   block for ever); a file larger than the biggest image accepted (``CXR_MAX_PIXELS``
   stored raw at 16 bits, plus headroom) is refused unread (:func:`read_file_bounded`).
3. **Integrity**: after ingest, the bytes must still hash to the SHA-256 recorded then
   (:func:`read_checked`).
4. **Decode**: :func:`cxr_orient.imaging.load_dicom_image` on the bytes already read
   (:func:`load_checked_image`), so the file is read once.

Every refusal is a :class:`~cxr_orient.errors.InputError` with its error code.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_orient.errors import (
    FileChangedError,
    FileMissingError,
    ImageTooLargeError,
    NotRegularFileError,
    PathNotAllowedError,
)
from cxr_orient.imaging import load_dicom_image
from cxr_orient.settings import IntakeSettings

__all__ = [
    "CheckedFile",
    "load_checked_image",
    "max_file_bytes",
    "read_checked",
    "read_file_bounded",
    "read_for_ingest",
    "resolve_ingest_path",
]


def resolve_ingest_path(file_path: str | Path, ingest_root: Path) -> Path:
    """The real path of a file, refused unless it lies under the ingest root.

    The one rule for ingest and workers alike: no '..' in the path, and the path
    with every symlink followed must be inside ``CXR_INGEST_ROOT``.
    """
    path = Path(file_path)
    if ".." in path.parts:
        raise PathNotAllowedError(f"path {str(file_path)!r} contains '..'")
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError as exc:
        raise FileMissingError(f"file {str(file_path)!r} does not exist") from exc
    except OSError as exc:
        raise FileMissingError(f"file {str(file_path)!r} cannot be resolved: {exc}") from exc
    if not real.is_relative_to(ingest_root):
        raise PathNotAllowedError(
            f"file {str(file_path)!r} resolves outside CXR_INGEST_ROOT ({ingest_root})"
        )
    return real


def max_file_bytes(max_pixels: int) -> int:
    """The largest file accepted: the biggest image of ``CXR_MAX_PIXELS`` stored raw at
    16 bits, plus headroom for the header (the network sources bound each received
    instance by the same figure)."""
    return 2 * max_pixels + (64 << 20)


def read_file_bounded(real: Path, *, shown: str, max_pixels: int) -> bytes:
    """A file's bytes, read whole (to hash, then parse from memory); refused unread when
    it is not a regular file, or larger than the biggest image accepted, stored raw at 16
    bits, plus headroom."""
    try:
        # Opened without blocking, then checked on the descriptor: a FIFO or a device
        # swapped in for the file after its check would block open() or read() for ever.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb", buffering=0) as file:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise NotRegularFileError(
                    f"file {shown!r} is not a regular file (a FIFO, device or socket); "
                    "refused unread"
                )
            if info.st_size > max_file_bytes(max_pixels):
                raise ImageTooLargeError(
                    f"file {shown!r} is {info.st_size} bytes, more than an image of "
                    f"CXR_MAX_PIXELS={max_pixels} can need"
                )
            os.set_blocking(fd, True)
            return file.readall()
    except FileNotFoundError as exc:
        raise FileMissingError(f"file {shown!r} vanished before it could be read") from exc
    except OSError as exc:
        raise FileMissingError(f"file {shown!r} cannot be read: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class CheckedFile:
    """A file that passed confinement and the bounded read."""

    #: The absolute path as named (what the database records; symlinks not followed).
    path: Path
    #: The path with symlinks followed (what was read).
    real: Path
    data: bytes
    sha256: str


def read_for_ingest(path: Path, intake: IntakeSettings) -> CheckedFile:
    """Steps 1 and 2 for a file being recorded: confined, a regular file, read bounded,
    hashed. The absolute path as named is what the database records."""
    absolute = path.expanduser().absolute()
    real = resolve_ingest_path(absolute, intake.ingest_root)
    if not real.is_file():
        raise FileMissingError(f"{str(path)!r} is not a regular file")
    data = read_file_bounded(real, shown=str(path), max_pixels=intake.max_pixels)
    return CheckedFile(absolute, real, data, hashlib.sha256(data).hexdigest())


def read_checked(file_path: str, *, expected_sha256: str, intake: IntakeSettings) -> CheckedFile:
    """Steps 1 to 3 for a recorded file: confined, read bounded, and unchanged since it
    was recorded (else :class:`~cxr_orient.errors.FileChangedError`)."""
    real = resolve_ingest_path(file_path, intake.ingest_root)
    data = read_file_bounded(real, shown=file_path, max_pixels=intake.max_pixels)
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise FileChangedError(
            f"file {file_path!r} changed after enqueue (sha256 {digest[:12]}..., "
            f"expected {expected_sha256[:12]}...)"
        )
    return CheckedFile(Path(file_path), real, data, digest)


def load_checked_image(
    file_path: str, *, expected_sha256: str, intake: IntakeSettings, size: int
) -> np.ndarray:
    """All four steps: a recorded file's pixels as a ``size x size`` grey uint8 image."""
    checked = read_checked(file_path, expected_sha256=expected_sha256, intake=intake)
    return load_dicom_image(
        checked.real, size=size, max_pixels=intake.max_pixels, data=checked.data
    )
