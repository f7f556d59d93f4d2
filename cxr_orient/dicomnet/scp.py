"""The pynetdicom server of ``cxr-orient listen``, as we run it: its application entity
(contexts, large PDUs, the ACSE, network and DIMSE timeouts) and the request handler of
every TCP connection, which

- reads PDUs with few large ``recv_into`` calls: pynetdicom 3.0 reads in 4 KiB ``recv``
  calls, a thousand Python iterations per 4 MB radiograph (measured: the receive path,
  not the disk, bounded the listener on 2 cores);
- gives every PDU read one deadline (the idle timeout), so that a PDU sent byte by byte
  cannot hold a thread;
- keeps the books of each connection from accept to close
  (:class:`~cxr_orient.dicomnet.admission.Admission`), and deletes the partial dataset of
  one that ends mid-transfer (:class:`~cxr_orient.dicomnet.receiving.ReceiveGuard`).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Sequence
from typing import Any

from pydicom.uid import UID

from cxr_orient.dicomnet.admission import Admission
from cxr_orient.dicomnet.receiving import ReceiveGuard

__all__ = [
    "MAX_PDU_BYTES",
    "VERIFICATION",
    "application_entity",
    "restart_idle_timer",
    "track_connections",
]

#: The largest P-DATA PDU we accept (peers send at most this much per PDU).
MAX_PDU_BYTES = 4 << 20

VERIFICATION = UID("1.2.840.10008.1.1")


def application_entity(
    *,
    ae_title: str,
    sop_classes: Sequence[UID],
    transfer_syntaxes: Sequence[UID],
    thread_ceiling: int,
    acse_timeout_s: float,
    idle_timeout_s: float,
) -> Any:
    """The SCP's pynetdicom AE: Verification, and ``sop_classes`` in
    ``transfer_syntaxes``. pynetdicom counts a connection from its first byte; the
    association limits are :class:`Admission`'s (from the A-ASSOCIATE-RQ), and
    pynetdicom's own bound stays only as a ceiling on threads (``thread_ceiling``)."""
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    ae.maximum_associations = thread_ceiling
    # No A-ASSOCIATE-RQ within acse_timeout: closed. No PDU for idle_timeout: aborted.
    ae.acse_timeout = acse_timeout_s
    ae.network_timeout = idle_timeout_s
    ae.dimse_timeout = idle_timeout_s
    # Large PDUs: pynetdicom handles each PDU in Python, so the 16 KiB default makes
    # receiving a 4 MB radiograph cost hundreds of round trips through the DUL thread.
    ae.maximum_pdu_size = MAX_PDU_BYTES
    ae.add_supported_context(VERIFICATION)
    for sop_class in sop_classes:
        ae.add_supported_context(sop_class, list(transfer_syntaxes))
    return ae


def track_connections(
    server: Any, *, admission: Admission, guard: ReceiveGuard, idle_timeout_s: float
) -> None:
    """Install our request handler on a started pynetdicom ``server`` (the module's
    docstring says what it does)."""
    from pynetdicom.transport import AssociationSocket, RequestHandler

    class FastSocket(AssociationSocket):
        def recv(self, nr_bytes: int) -> bytearray:
            buffer = bytearray(nr_bytes)
            view = memoryview(buffer)
            got = 0
            sock = self.socket
            assert sock is not None
            # One deadline for the whole read, not one per recv: a peer that trickles
            # a byte now and then must not hold the thread (the DUL's own idle timer
            # is restarted only between PDUs).
            deadline = time.monotonic() + idle_timeout_s
            try:
                while got < nr_bytes:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("PDU not received within CXR_DICOM_IDLE_TIMEOUT_S")
                    sock.settimeout(left)
                    count = sock.recv_into(view[got:], nr_bytes - got)
                    if not count:
                        return buffer[:got]
                    got += count
            finally:
                del view
            return buffer

    class Handler(RequestHandler):
        def _create_association(self) -> Any:
            self.request.settimeout(idle_timeout_s)
            assoc = super()._create_association()
            if type(assoc.dul.socket) is AssociationSocket:
                assoc.dul.socket.__class__ = FastSocket
            self.assoc = assoc
            admission.opened(id(assoc), str(self.client_address[0]), self._close_pending)
            return assoc

        def _close_pending(self) -> None:
            """Close a connection still waiting for its A-ASSOCIATE-RQ, from any thread:
            shut the socket (its reader sees the end), and wake the association thread
            waiting for the request as its timeout would (it gets None), so that the
            thread ends now, not CXR_DICOM_ACSE_TIMEOUT_S later."""
            with contextlib.suppress(OSError):  # gone already
                self.request.shutdown(socket.SHUT_RDWR)
            self.assoc.dul.to_user_queue.put(None)

        def handle(self) -> None:
            # This thread lives as long as the connection: its end is the one place
            # every way a connection ends (released, aborted, timed out, evicted, the
            # peer killed) passes through.
            try:
                super().handle()
                self.assoc.join()
            finally:
                assoc = getattr(self, "assoc", None)
                if assoc is not None:
                    guard.ended(assoc)
                    admission.closed(id(assoc))

    server.RequestHandlerClass = Handler
    # The connection threads end with their connections: stopping the server must not
    # wait for them (serve_dicom gives open associations their grace, then aborts).
    server.daemon_threads = True
    server.block_on_close = False


def restart_idle_timer(assoc: Any) -> None:
    """Count the peer as active again after our own handler ran: pynetdicom restarts an
    association's idle timer only when a PDU arrives, and the peer sends nothing while
    it waits for our response, so a C-STORE handler slower than the idle timeout (a slow
    disk's fdatasync) would otherwise have the association aborted right after its
    response. pynetdicom has no public call for it: its ``_idle_timer``, used here only."""
    timer = getattr(assoc.dul, "_idle_timer", None)
    if timer is not None:
        timer.restart()
