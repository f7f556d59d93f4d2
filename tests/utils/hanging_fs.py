"""A real filesystem whose reads hang, like a stalled NFS mount: a FUSE mount (fusepy over
libfuse) mirroring the files of a folder read-only; once :meth:`HangingMount.hang` is
called, every read of a file's bytes blocks until :meth:`HangingMount.resume` or until
the mount is torn down (``stat`` still
answers, as it does from an NFS client's attribute cache).

Run as ``python -m tests.utils.hanging_fs MOUNTPOINT SOURCE SWITCH`` by
:func:`hanging_mount`; reads hang while the file SWITCH exists.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["HangingMount", "fuse_unavailable", "hanging_mount"]

REPO = Path(__file__).resolve().parents[2]


def fuse_unavailable() -> str | None:
    """Why a FUSE mount cannot be made here, or None."""
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse on this machine"
    try:
        import fuse  # noqa: F401  (fusepy; needs libfuse2: apt libfuse2 fuse3)
    except (ImportError, OSError) as exc:
        return f"fusepy/libfuse not installed ({exc})"
    return None


class HangingMount:
    def __init__(self, mountpoint: Path, switch: Path, process: subprocess.Popen[bytes]):
        self.mountpoint = mountpoint
        self._switch = switch
        self._process = process

    def hang(self) -> None:
        """From now on, reading any file's bytes blocks."""
        self._switch.touch()

    def resume(self) -> None:
        """The server answers again, the reads it held first. A process killed while
        blocked in a read here stays in uninterruptible sleep (as on a hard NFS mount)
        until then: the kernel waits for the answer to a request already sent."""
        self._switch.unlink(missing_ok=True)


@contextmanager
def hanging_mount(mountpoint: Path, source: Path, log: Path) -> Iterator[HangingMount]:
    """``source``'s files at ``mountpoint`` (a FUSE mount) for the block; torn down
    afterwards (the server killed: reads still blocked in it fail, then a lazy unmount)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    switch = log.with_suffix(".hang")
    switch.unlink(missing_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.utils.hanging_fs",
                str(mountpoint),
                str(source),
                str(switch),
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"FUSE mount not up:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield HangingMount(mountpoint, switch, process)
    finally:
        process.kill()
        process.wait()
        umount = shutil.which("fusermount3") or shutil.which("fusermount")
        command = (
            [umount, "-u", "-z", str(mountpoint)] if umount else ["umount", "-l", str(mountpoint)]
        )
        subprocess.run(command, check=False, capture_output=True)


def _serve(mountpoint: str, source: str, switch: str) -> None:
    from fuse import FUSE, FuseOSError, Operations

    root = Path(source)
    hang_flag = Path(switch)

    class Mirror(Operations):
        def _real(self, path: str) -> Path:
            return root / path.lstrip("/")

        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            try:
                info = os.lstat(self._real(path))
            except FileNotFoundError as exc:
                raise FuseOSError(errno.ENOENT) from exc
            return {
                key: getattr(info, key)
                for key in (
                    "st_mode",
                    "st_size",
                    "st_nlink",
                    "st_uid",
                    "st_gid",
                    "st_atime",
                    "st_mtime",
                    "st_ctime",
                )
            }

        def readdir(self, path: str, fh: Any) -> list[str]:
            return [".", "..", *sorted(os.listdir(self._real(path)))]

        def open(self, path: str, flags: int) -> int:
            return os.open(self._real(path), os.O_RDONLY)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            while hang_flag.exists():  # the stalled server: no answer while it lasts
                time.sleep(0.05)
            return os.pread(fh, size, offset)

        def release(self, path: str, fh: int) -> int:
            with contextlib.suppress(OSError):
                os.close(fh)
            return 0

    # direct_io: every read reaches the server (no page cache answering for it).
    FUSE(Mirror(), mountpoint, foreground=True, ro=True, nothreads=False, direct_io=True)


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
