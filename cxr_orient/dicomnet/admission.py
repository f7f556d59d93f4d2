"""Who gets a slot on the listener: connections and associations counted so that idle or
slow peers cannot keep a real modality out.

pynetdicom counts every accepted TCP connection as an association from its first byte,
so eight sockets that never send an A-ASSOCIATE-RQ used to fill ``CXR_DICOM_MAX_ASSOCIATIONS``
and refuse every modality until its 30 s timer dropped them. Here:

- a connection that has not yet sent its A-ASSOCIATE-RQ is *pending*: it does not count
  against the association limit, it has ``CXR_DICOM_ACSE_TIMEOUT_S`` to send it, and when
  more than ``CXR_DICOM_MAX_PENDING`` are pending the oldest is closed (a modality sends
  its request at once; whoever waits longest is the idle one);
- an association is counted from its A-ASSOCIATE-RQ against the total
  (``CXR_DICOM_MAX_ASSOCIATIONS``), per peer address (``CXR_DICOM_MAX_ASSOCIATIONS_PER_HOST``)
  and per calling AE title (``CXR_DICOM_MAX_ASSOCIATIONS_PER_CALLER``), so one peer
  cannot hold every slot; an association silent for ``CXR_DICOM_IDLE_TIMEOUT_S`` is
  aborted (pynetdicom's network and DIMSE timeouts, and the socket's own timeout for a
  PDU sent byte by byte).

Every refusal is logged (peer address, AE title, reason; never a UID) and counted by
reason (``cxr_orient_dicom_refused_total``, :mod:`cxr_orient.metrics`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Admission", "Limits"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """How many of what the listener holds at once (0 per host / per caller: no limit)."""

    associations: int
    per_host: int
    per_caller: int
    pending: int


@dataclass
class _Pending:
    host: str
    since: float
    close: Callable[[], None]


class Admission:
    """The listener's books: pending connections and admitted associations, by peer.
    Thread-safe; each connection's thread calls :meth:`opened`, :meth:`requested` (at
    its A-ASSOCIATE-RQ) and :meth:`closed` (always, when it ends)."""

    def __init__(self, limits: Limits, count_refusal: Callable[[str], None]) -> None:
        self.limits = limits
        self._count_refusal = count_refusal
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._admitted: dict[int, tuple[str, str]] = {}

    def refuse(self, reason: str, message: str, *args: Any) -> None:
        """Log one refusal and count it by ``reason``."""
        logger.warning("refused (%s): " + message, reason, *args)
        self._count_refusal(reason)

    def opened(self, key: int, host: str, close: Callable[[], None]) -> None:
        """A TCP connection was accepted; close the oldest pending one beyond the limit."""
        evicted: list[_Pending] = []
        with self._lock:
            self._pending[key] = _Pending(host, time.monotonic(), close)
            while len(self._pending) > self.limits.pending:
                oldest = min(self._pending, key=lambda k: self._pending[k].since)
                evicted.append(self._pending.pop(oldest))
        for victim in evicted:
            self.refuse(
                "pending_evicted",
                "connection from %s closed: no A-ASSOCIATE-RQ "
                "after %.1f s while %d connections wait (CXR_DICOM_MAX_PENDING)",
                victim.host,
                time.monotonic() - victim.since,
                self.limits.pending,
            )
            victim.close()

    def associating(self, key: int) -> None:
        """The connection sent its A-ASSOCIATE-RQ: it is no longer pending."""
        with self._lock:
            self._pending.pop(key, None)

    def requested(self, key: int, host: str, title: str) -> str | None:
        """The connection sent its A-ASSOCIATE-RQ: admit it, or say which limit refuses
        it (``associations``, ``per_host``, ``per_caller``; logged and counted)."""
        with self._lock:
            self._pending.pop(key, None)
            hosts = Tally(h for h, _ in self._admitted.values())
            titles = Tally(t for _, t in self._admitted.values())
            reason = None
            if len(self._admitted) >= self.limits.associations:
                reason = "associations"
            elif self.limits.per_host and hosts[host] >= self.limits.per_host:
                reason = "per_host"
            elif self.limits.per_caller and titles[title] >= self.limits.per_caller:
                reason = "per_caller"
            else:
                self._admitted[key] = (host, title)
        if reason is not None:
            setting = {
                "associations": "CXR_DICOM_MAX_ASSOCIATIONS",
                "per_host": "CXR_DICOM_MAX_ASSOCIATIONS_PER_HOST",
                "per_caller": "CXR_DICOM_MAX_ASSOCIATIONS_PER_CALLER",
            }[reason]
            self.refuse(reason, "association from %s@%s rejected: %s reached", title, host, setting)
        return reason

    def closed(self, key: int) -> None:
        """The connection ended. One that never sent an A-ASSOCIATE-RQ is a refusal too
        (timed out, or the peer gave up): logged and counted."""
        with self._lock:
            pending = self._pending.pop(key, None)
            self._admitted.pop(key, None)
        if pending is not None:
            self.refuse(
                "no_association_request",
                "connection from %s closed after %.1f s "
                "without an A-ASSOCIATE-RQ (CXR_DICOM_ACSE_TIMEOUT_S)",
                pending.host,
                time.monotonic() - pending.since,
            )

    def counts(self) -> tuple[int, int]:
        """(pending connections, admitted associations) now."""
        with self._lock:
            return len(self._pending), len(self._admitted)
