"""The messages between a pool process and an inference process, over a Unix socket.

Both ways: an 8-byte header (two big-endian uint32: the JSON length, the payload
length), the JSON, the payload (an array's bytes, C order).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import numpy as np

__all__ = ["array_from", "array_header", "recv", "send"]

_HEADER = struct.Struct("!II")


def send(sock: socket.socket, header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
    text = json.dumps(header).encode()
    sock.sendall(_HEADER.pack(len(text), len(payload)) + text)
    if len(payload):
        sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("the other end closed the connection")
        got += k
    return buffer


def recv(sock: socket.socket) -> tuple[dict[str, Any], bytearray]:
    text_len, payload_len = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    header = json.loads(bytes(_recv_exact(sock, text_len)))
    return header, _recv_exact(sock, payload_len) if payload_len else bytearray()


def array_header(x: np.ndarray) -> dict[str, Any]:
    return {"dtype": x.dtype.str, "shape": list(x.shape)}


def array_from(header: dict[str, Any], payload: bytearray | memoryview) -> np.ndarray:
    return np.frombuffer(payload, dtype=np.dtype(header["dtype"])).reshape(header["shape"])
