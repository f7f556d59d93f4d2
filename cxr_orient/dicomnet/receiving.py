"""Receiving a C-STORE dataset onto disk, bounded, and never leaving a partial behind.

pynetdicom buffers a C-STORE's dataset in memory unless ``STORE_RECV_CHUNKED_DATASET``
is on; then it writes each P-DATA fragment to a temporary file as it arrives, in the
system's temporary folder. :func:`receive_on_disk` turns that on for the listener and
puts those files in the spool's ``.receiving`` folder, on the spool's file system, so
that an accepted instance is renamed into the spool (:func:`spool.adopt_file`) instead
of copied, and so that no PHI lands in ``/tmp``.

:class:`ReceiveGuard` watches the P-DATA as it arrives (``EVT_PDU_RECV``, on the
association's reader thread): once a dataset passes the largest instance we accept
(``CXR_MAX_PIXELS``, :func:`cxr_orient.intake.max_file_bytes`) the association is aborted
at once, an A-ABORT sent and the connection closed, instead of receiving (and storing)
the rest to refuse it afterwards. When an association ends in any other way than a
completed C-STORE (abort, timeout, the peer killed), the partial file it was receiving
into is deleted then; :func:`cxr_orient.dicomnet.spool.remove_stale_partials` deletes
those a killed listener leaves (at its next start and in the periodic purge).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["RECEIVING_FOLDER", "ReceiveGuard", "receive_on_disk"]

logger = logging.getLogger(__name__)

#: Under the spool: the files pynetdicom receives datasets into.
RECEIVING_FOLDER = ".receiving"

_LOCK = threading.Lock()
#: The partial file each reader thread is writing now (pynetdicom creates it on the
#: association's reader (DUL) thread when a C-STORE's command set is complete).
_PARTIALS: dict[int, Path] = {}


@contextmanager
def receive_on_disk(folder: Path) -> Iterator[None]:
    """While open, C-STORE datasets are received into files under ``folder`` (process
    wide: pynetdicom's switch and its temporary-file factory are module globals)."""
    from tempfile import NamedTemporaryFile

    from pynetdicom import _config, dimse_messages

    folder.mkdir(parents=True, exist_ok=True)

    def partial_file(*args: Any, **kwargs: Any) -> Any:
        # Not *.dcm: the sweep records every *.dcm under the spool as received.
        kwargs.update(dir=folder, prefix=".receiving-", suffix=".tmp")
        handle = NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115 - pynetdicom closes it
        with _LOCK:
            _PARTIALS[threading.get_ident()] = Path(handle.name)
        return handle

    saved = (_config.STORE_RECV_CHUNKED_DATASET, dimse_messages.NamedTemporaryFile)
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = partial_file
    try:
        yield
    finally:
        _config.STORE_RECV_CHUNKED_DATASET, dimse_messages.NamedTemporaryFile = saved


def _reader_id(assoc: Any) -> int | None:
    return getattr(assoc.dul, "ident", None)


class ReceiveGuard:
    """Per association: the dataset bytes received for the C-STORE in progress, the
    abort once they pass ``largest``, and the partial file's removal when the
    association ends without storing it."""

    def __init__(self, largest: int, refuse: Callable[[str, str], None]) -> None:
        self.largest = largest
        self._refuse = refuse
        self._received: dict[int, int] = {}

    def on_pdu(self, event: Any) -> None:
        """``EVT_PDU_RECV``: count the P-DATA of the dataset in progress."""
        from pynetdicom.pdu import P_DATA_TF

        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF):
            return
        key = id(event.assoc)
        received = self._received.get(key, 0)
        for item in pdu.presentation_data_value_items:
            data = item.presentation_data_value
            if not data:
                continue
            if data[0] & 1:  # a command fragment: a new message starts
                received = 0
            else:
                received += len(data) - 1
        self._received[key] = received
        if received > self.largest:
            self._received[key] = -(1 << 62)  # once
            self._abort(event.assoc, received)

    def _abort(self, assoc: Any, received: int) -> None:
        from pynetdicom.pdu import A_ABORT_RQ

        self._refuse(
            "too_large",
            f"C-STORE from {str(assoc.requestor.ae_title).strip()}@"
            f"{assoc.requestor.address}: association aborted after "
            f"{received} dataset bytes, more than CXR_MAX_PIXELS allows",
        )
        sock = assoc.dul.socket
        try:
            # We are on the reader thread: the A-ABORT goes straight out, then the
            # connection is shut; the reader sees it closed and the association ends
            # (aborted), without reading the rest.
            abort = A_ABORT_RQ()
            abort.source = 0x02
            abort.reason_diagnostic = 0x00
            sock.send(abort.encode())
            if sock.socket is not None:
                sock.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def cut_off(self, assoc: Any) -> bool:
        """Whether this guard aborted ``assoc`` (its dataset passed the bound)."""
        return self._received.get(id(assoc), 0) < 0

    def taken(self, assoc: Any) -> None:
        """The C-STORE handler took (or refused) the dataset: nothing partial left."""
        reader = _reader_id(assoc)
        with _LOCK:
            if reader is not None:
                _PARTIALS.pop(reader, None)

    def ended(self, assoc: Any) -> None:
        """The association ended: delete the partial file it was receiving into."""
        self._received.pop(id(assoc), None)
        reader = _reader_id(assoc)
        with _LOCK:
            partial = _PARTIALS.pop(reader, None) if reader is not None else None
        if partial is not None and partial.exists():
            partial.unlink(missing_ok=True)
            logger.info(
                "association from %s ended mid-transfer: partial dataset deleted",
                assoc.requestor.address,
            )
