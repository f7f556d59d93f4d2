"""A pool process's side of ``CXR_INFERENCE=served``: :class:`ServedClassifier`."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxr_orient.errors import ModelError
from cxr_orient.modelstore import Classifier, ModelCard
from cxr_orient.serving.wire import array_from, array_header, recv, send

__all__ = ["CONNECT_TIMEOUT_S", "ServedClassifier"]

#: How long a pool process waits for an inference process to answer its first call (the
#: inference process imports the framework and loads the model meanwhile).
CONNECT_TIMEOUT_S = 180.0


class ServedClassifier(Classifier):
    """A :class:`Classifier` whose forward pass runs in an inference process.

    Built in a pool process from the card and the checkpoint's path and SHA-256; holds
    no Keras model. One connection per process, opened on first use (after fork)."""

    def __init__(
        self, card: ModelCard, *, path: Path, sha256: str, mixed_precision: str, socket_path: str
    ) -> None:
        super().__init__(None, card)
        self.path = Path(path)
        self.sha256 = sha256
        self.mixed_precision = mixed_precision
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._outputs: list[str] | None = None

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.socket_path)
                break
            except OSError as e:
                sock.close()
                if time.monotonic() > deadline:
                    raise ModelError(
                        f"no inference process at {self.socket_path} (CXR_INFERENCE=served): {e}"
                    ) from e
                time.sleep(0.2)
        self._sock = sock
        header, _ = self._call(
            {
                "op": "load",
                "path": str(self.path),
                "sha256": self.sha256,
                "mixed_precision": self.mixed_precision,
            }
        )
        self._outputs = list(header["outputs"])
        return sock

    def _call(
        self, header: dict[str, Any], payload: bytes | memoryview = b""
    ) -> tuple[dict[str, Any], bytearray]:
        sock = self._sock
        assert sock is not None
        try:
            send(sock, header, payload)
            answer, data = recv(sock)
        except OSError as e:
            self._sock = None
            sock.close()
            raise ModelError(f"the inference process at {self.socket_path} went away: {e}") from e
        if "error" in answer:
            raise ModelError(f"inference process: {answer['error']}")
        return answer, data

    def _forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            self._connect()
            x = np.ascontiguousarray(x)
            header, data = self._call(
                {"op": "forward", "sha256": self.sha256, **array_header(x)}, x.data.cast("B")
            )
        out: dict[str, np.ndarray] = {}
        offset = 0
        for name, spec in header["outputs"].items():
            count = int(np.prod(spec["shape"]))
            size = count * np.dtype(spec["dtype"]).itemsize
            out[name] = array_from(spec, memoryview(data)[offset : offset + size]).astype(
                np.float64
            )
            offset += size
        return out

    def padded_size(self, n: int) -> int:
        return n  # the inference process pads what it joins, once

    @property
    def has_heads(self) -> bool:
        with self._lock:
            self._connect()
        return "orientation" in (self._outputs or ())

    def warm_up(self, max_batch: int) -> list[int]:
        """Ask the inference process to compile its shapes (once, for every pool
        process); returns the sizes it ran."""
        with self._lock:
            self._connect()
            header, _ = self._call({"op": "warm_up", "sha256": self.sha256, "max_batch": max_batch})
        return list(header["sizes"])
