"""How failures leave the imaging package: only :mod:`cxr_orient.errors` classes.

The exception classes themselves live in :mod:`cxr_orient.errors`; this module holds
the wrapping that turns every other exception (pydicom, numpy, Pillow, codecs) into
:class:`~cxr_orient.errors.DecodeError`, and the small helpers for error messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cxr_orient.errors import CxrError, DecodeError, FileMissingError

__all__ = ["errors_named", "require_file", "where"]


@contextmanager
def errors_named(path: Path | None) -> Iterator[None]:
    """Let our errors through; turn every other exception into DecodeError."""
    try:
        yield
    except CxrError:
        raise
    except MemoryError as e:
        raise DecodeError(f"{where(path)}out of memory while decoding") from e
    except Exception as e:
        raise DecodeError(f"{where(path)}{type(e).__name__}: {e}") from e
    except BaseException as e:
        # Rust codecs (pylibjpeg-rle via pyo3) panic on crafted data with PanicException,
        # a BaseException: it must fail this file, not the whole batch (found by fuzzing).
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise DecodeError(f"{where(path)}codec panic {type(e).__name__}: {e}") from e


def where(path: Path | None) -> str:
    """``"path: "`` to start an error message with, or ``""`` when there is no path."""
    return f"{path}: " if path is not None else ""


def require_file(path: Path) -> None:
    """Raise FileMissingError unless ``path`` is a regular file."""
    if not path.is_file():
        raise FileMissingError(f"{path}: no such file")
