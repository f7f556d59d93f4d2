"""Starting and stopping the inference processes, in the worker's main process (before
the pool forks): no framework is imported here."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile

from cxr_orient.errors import ModelError

__all__ = ["card_count", "server_sockets", "socket_for", "start_servers", "stop_servers"]

logger = logging.getLogger(__name__)

_SERVERS: list[subprocess.Popen[bytes]] = []
_SOCKETS: list[str] = []
_FOLDER: str | None = None


def card_count() -> int:
    """The cards this host shows (``nvidia-smi -L``, honouring CUDA_VISIBLE_DEVICES);
    0 where there is none. Nothing CUDA is loaded here."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return 0
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return 0
    try:
        listed = subprocess.run(
            [tool, "-L"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    count = sum(line.startswith("GPU ") for line in listed.splitlines())
    if visible:
        count = min(count, len([v for v in visible.split(",") if v.strip()]))
    return count


def start_servers(*, max_batch: int, log_level: str = "INFO") -> list[str]:
    """In the worker's main process, before the pool forks: one inference process per
    card (one on a host without a card), each on its own Unix socket; returns the
    sockets, which the pool processes inherit (:func:`server_sockets`)."""
    global _FOLDER
    if _SERVERS:
        return list(_SOCKETS)
    cards = card_count()
    _FOLDER = tempfile.mkdtemp(prefix="cxr-inference-")
    visible = [
        v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()
    ]
    for k in range(max(cards, 1)):
        path = os.path.join(_FOLDER, f"card{k}.sock")
        env = dict(os.environ)
        if cards:
            env["CUDA_VISIBLE_DEVICES"] = visible[k] if visible else str(k)
        command = [
            sys.executable,
            "-m",
            "cxr_orient.serving.server",
            "--socket",
            path,
            "--max-batch",
            str(max_batch),
            "--parent",
            str(os.getpid()),
            "--log-level",
            log_level,
        ]
        _SERVERS.append(subprocess.Popen(command, env=env))
        _SOCKETS.append(path)
    logger.info(
        "started %d inference process(es) (CXR_INFERENCE=served): %s",
        len(_SERVERS),
        ", ".join(str(p.pid) for p in _SERVERS),
    )
    return list(_SOCKETS)


def server_sockets() -> list[str]:
    """The inference processes' sockets (inherited from the worker's main process)."""
    return list(_SOCKETS)


def socket_for(pid: int) -> str:
    """The socket a pool process uses: the processes spread over the cards by pid."""
    if not _SOCKETS:
        raise ModelError(
            "CXR_INFERENCE=served, but this worker started no inference "
            "process (start the worker with `celery -A worker worker`)"
        )
    return _SOCKETS[pid % len(_SOCKETS)]


def stop_servers(timeout_s: float = 10.0) -> None:
    """Stop the inference processes (worker shutdown)."""
    for process in _SERVERS:
        process.terminate()
    for process in _SERVERS:
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    _SERVERS.clear()
    _SOCKETS.clear()
    if _FOLDER:
        shutil.rmtree(_FOLDER, ignore_errors=True)
