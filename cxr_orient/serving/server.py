"""The inference process of ``CXR_INFERENCE=served``: ``python -m cxr_orient.serving.server
--socket PATH``, started by :func:`cxr_orient.serving.start_servers`."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_orient.errors import ModelError
from cxr_orient.modelstore import Classifier
from cxr_orient.serving.wire import array_from, array_header, recv, send

__all__ = ["InferenceServer", "card_bucket", "main"]

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    conn: socket.socket
    header: dict[str, Any]
    payload: bytearray


class InferenceServer:
    """Listens on a Unix socket; one thread reads each connection, one runs the model on
    every forward request waiting, joined (up to ``max_batch`` images)."""

    def __init__(self, socket_path: str, *, max_batch: int = 1024) -> None:
        self.socket_path = socket_path
        self.max_batch = max_batch
        self._models: dict[str, Classifier] = {}
        self._warm: dict[str, list[int]] = {}
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._held: _Request | None = None
        self.batches = 0
        self.images = 0

    def serve_forever(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        listener.bind(self.socket_path + ".tmp")
        os.replace(self.socket_path + ".tmp", self.socket_path)  # appears ready to accept
        listener.listen(256)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        logger.info("inference process %d listening on %s", os.getpid(), self.socket_path)
        while True:
            self._handle(self._next())

    def _accept(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        try:
            while True:
                header, payload = recv(conn)
                self._queue.put(_Request(conn, header, payload))
        except (ConnectionError, OSError):
            conn.close()

    def _next(self) -> list[_Request]:
        """The next request, and with a forward pass every other forward pass for the same
        model already waiting, up to ``max_batch`` images."""
        first = self._held or self._queue.get()
        self._held = None
        if first.header.get("op") != "forward":
            return [first]
        group, count = [first], int(first.header["shape"][0])
        while count < self.max_batch:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            n = int(more.header["shape"][0]) if more.header.get("op") == "forward" else 0
            if (
                more.header.get("op") != "forward"
                or more.header["sha256"] != first.header["sha256"]
                or count + n > self.max_batch
            ):
                self._held = more
                break
            group.append(more)
            count += n
        return group

    def _reply(
        self, request: _Request, header: dict[str, Any], payload: bytes | memoryview = b""
    ) -> None:
        try:
            send(request.conn, header, payload)
        except OSError:
            request.conn.close()

    def _handle(self, group: list[_Request]) -> None:
        op = group[0].header.get("op")
        try:
            if op == "load":
                model = self._load(group[0].header)
                self._reply(group[0], {"outputs": _output_names(model)})
            elif op == "warm_up":
                sizes = self._warm_up(group[0].header)
                self._reply(group[0], {"sizes": sizes})
            elif op == "forward":
                self._forward(group)
            else:
                self._reply(group[0], {"error": f"unknown op {op!r}"})
        except Exception as e:
            logger.exception("inference request %s failed", op)
            for request in group:
                self._reply(request, {"error": f"{type(e).__name__}: {e}"})

    def _load(self, header: dict[str, Any]) -> Classifier:
        from cxr_orient.modelstore import load_checkpoint, read_card, with_mixed_bfloat16

        sha = str(header["sha256"])
        if sha not in self._models:
            started = time.monotonic()
            path = Path(header["path"])
            card = read_card(path)
            model = load_checkpoint(path, expected_sha256=sha)
            if header.get("mixed_precision") == "bfloat16":
                model = with_mixed_bfloat16(model, card)
            self._models[sha] = Classifier(model, card)
            logger.info(
                "inference process %d loaded %s in %.1f s",
                os.getpid(),
                path.name,
                time.monotonic() - started,
            )
        return self._models[sha]

    def _model(self, sha: str) -> Classifier:
        if sha not in self._models:
            raise ModelError(f"model {sha[:12]}... not loaded in this inference process")
        return self._models[sha]

    def _warm_up(self, header: dict[str, Any]) -> list[int]:
        sha = str(header["sha256"])
        if sha not in self._warm:
            started = time.monotonic()
            classifier = self._model(sha)
            size = classifier.card.input_size
            if classifier.padded_size(1) != 1:
                # JAX compiles per shape: every bucket up to the joined batch's largest.
                sizes = sorted({self._bucket(classifier, n) for n in range(1, self.max_batch + 1)})
                for n in sizes:
                    classifier.model.predict_on_batch(np.zeros((n, size, size, 3), np.uint8))
            else:
                # Other backends trace once: one batch of the pool processes' size.
                sizes = classifier.warm_up(int(header["max_batch"]))
            self._warm[sha] = sizes
            logger.info(
                "inference process %d compiled batch sizes %s in %.1f s",
                os.getpid(),
                sizes,
                time.monotonic() - started,
            )
        return self._warm[sha]

    def _bucket(self, classifier: Classifier, n: int) -> int:
        """The batch size ``n`` joined images are padded to. On a card, powers of four
        from 64 (64, 256, 1024: three programs to compile at start, not eight; the card
        does not notice the padding); elsewhere the classifier's own buckets."""
        if classifier.padded_size(1) == 1 or not _on_accelerator():
            return classifier.padded_size(n)
        return card_bucket(n, self.max_batch)

    def _forward(self, group: list[_Request]) -> None:
        classifier = self._model(str(group[0].header["sha256"]))
        parts = [array_from(r.header, r.payload) for r in group]
        x = np.concatenate(parts) if len(parts) > 1 else parts[0]
        n = len(x)
        padded = self._bucket(classifier, n)
        if padded > n:
            x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), dtype=x.dtype)])
        out = classifier.model.predict_on_batch(x)
        named = out if isinstance(out, dict) else {"view": out}
        arrays = {
            k: np.ascontiguousarray(np.asarray(v)[:n], dtype=np.float32) for k, v in named.items()
        }
        self.batches += 1
        self.images += n
        start = 0
        for request, part in zip(group, parts, strict=True):
            end = start + len(part)
            pieces = {k: np.ascontiguousarray(a[start:end]) for k, a in arrays.items()}
            self._reply(
                request,
                {"outputs": {k: array_header(a) for k, a in pieces.items()}},
                b"".join(a.tobytes() for a in pieces.values()),
            )
            start = end


def card_bucket(n: int, max_batch: int) -> int:
    """On a card, the batch ``n`` joined images are padded to: 64, 256, 1024, ... (powers
    of four from 64), at most ``max_batch`` (and never fewer than ``n``)."""
    bucket = 64
    while bucket < n:
        bucket *= 4
    return max(n, min(bucket, max_batch))


@functools.cache
def _on_accelerator() -> bool:
    """Whether the model runs on a card (Keras lists a device other than CPUs)."""
    import keras

    return any(not str(d).lower().startswith("cpu") for d in keras.distribution.list_devices())


def _output_names(classifier: Classifier) -> list[str]:
    names = list(getattr(classifier.model, "output_names", ()) or ())
    return names if len(names) > 1 else ["view"]


def _exit_with_parent(parent: int) -> None:
    """An inference process outlives no worker: it exits once its parent is gone."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="cxr-orient inference process")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--parent", type=int, default=0)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="[%(asctime)s: %(levelname)s/inference-%(process)d] %(message)s",
    )
    if args.parent:
        threading.Thread(target=_exit_with_parent, args=(args.parent,), daemon=True).start()
    InferenceServer(args.socket, max_batch=args.max_batch).serve_forever()


if __name__ == "__main__":
    main()
