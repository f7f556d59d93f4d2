"""Connections of ``cxr-orient serve``: a cap on how many are open at once, a deadline for
each request's line and headers, and a last deadline for its body.

Uvicorn's HTTP/1.1 protocol (h11; uvicorn has neither a header deadline nor a cap that
counts connections before their headers are in) with three additions, each refusal
logged with the peer's address (no header is believed before the headers are whole):

- **the caps** (``CXR_HTTP_MAX_CONNECTIONS`` in all, ``CXR_HTTP_MAX_CONNECTIONS_PER_CLIENT``
  per peer address, trusted proxies excepted): a connection beyond either is answered 503
  and closed as soon as it is accepted, before it can hold anything, so one peer cannot
  take every connection;
- **the header deadline** (``CXR_HTTP_HEADER_TIMEOUT_S``): from the moment a connection
  is made, or the previous answer was sent, its next request line and headers must be in
  within the deadline, else 408 and closed: a peer that opens connections and never
  finishes its headers holds each for that long at most (uvicorn alone holds it until
  the peer leaves);
- **the body's last deadline**: the body deadline is the ASGI middleware's
  (:mod:`service.limits`, which answers 408); a body still arriving a grace period
  after it (the answer went out without reading it: 401, 413...) gets its connection
  closed here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from cxr_orient.settings import Settings
from service.clients import is_trusted
from service.limits import limits_for

__all__ = ["ConnectionLimits", "GuardedH11Protocol", "guarded_protocol"]

logger = logging.getLogger(__name__)
#: After the middleware's body deadline, how long the protocol waits before it closes.
BODY_GRACE_S = 5.0
_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)
_BUSY_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
    b"content-length: 0\r\nconnection: close\r\nretry-after: 1\r\n\r\n"
)


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    max_per_client: int
    header_timeout_s: float
    settings: Settings


class GuardedH11Protocol(H11Protocol):
    """:class:`H11Protocol` with the cap and deadlines above (``limits`` is set on a
    subclass by :func:`guarded_protocol`)."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None

    def _peer(self) -> str:
        return self.client[0] if self.client else "unknown"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        refusal = self._over_a_cap()
        if refusal is not None:
            logger.warning("503 to %s: %s", self._peer(), refusal)
            transport.write(_BUSY_503)
            transport.close()
            return
        self._arm_header_timer()

    def _over_a_cap(self) -> str | None:
        """Why this new connection is one too many, or None. Connections already closing
        (refused a moment ago) do not count."""
        others = [c for c in self.connections if c is not self and _still_open(c)]
        if len(others) >= self.limits.max_connections:
            return (
                f"{len(others)} connections open, at CXR_HTTP_MAX_CONNECTIONS="
                f"{self.limits.max_connections}"
            )
        peer = self._peer()
        if is_trusted(peer, self.limits.settings.http.trusted_proxies):
            return None
        same = sum(1 for c in others if (getattr(c, "client", None) or ("",))[0] == peer)
        if same >= self.limits.max_per_client:
            return (
                f"{same} connections open from it, at "
                f"CXR_HTTP_MAX_CONNECTIONS_PER_CLIENT={self.limits.max_per_client}"
            )
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_state()

    # --- the deadlines --------------------------------------------------------------

    def _follow_state(self) -> None:
        """Arm or cancel the timers by where the peer is in its request."""
        if self.transport.is_closing():
            self._cancel_timers()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            if self.header_timer is None and self.conn.our_state is h11.IDLE:
                self._arm_header_timer()
            return
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        if state is h11.SEND_BODY:
            if self.body_timer is None:
                path = self.scope["path"] if self.scope else "/"
                timeout = limits_for(path, self.limits.settings).timeout_s + BODY_GRACE_S
                self.body_timer = self.loop.call_later(timeout, self._body_too_slow, timeout)
        elif self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def _arm_header_timer(self) -> None:
        self.header_timer = self.loop.call_later(
            self.limits.header_timeout_s, self._headers_too_slow
        )

    def _cancel_timers(self) -> None:
        for timer in (self.header_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.header_timer = self.body_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is not h11.IDLE:
            return  # an answer is still being written
        logger.warning(
            "408 to %s: request headers not complete within %g s (CXR_HTTP_HEADER_TIMEOUT_S)",
            self._peer(),
            self.limits.header_timeout_s,
        )
        self.transport.write(_TIMEOUT_408)
        self.transport.close()

    def _body_too_slow(self, timeout: float) -> None:
        self.body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        logger.warning(
            "closed the connection of %s: request body still arriving after %g s",
            self._peer(),
            timeout,
        )
        if self.cycle is not None and not self.cycle.response_started:
            self.transport.write(_TIMEOUT_408)
        self.transport.close()


def _still_open(protocol: object) -> bool:
    transport = getattr(protocol, "transport", None)
    return transport is not None and not transport.is_closing()


def guarded_protocol(settings: Settings) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn is given (``http=``), bound to ``settings``' limits."""
    limits = ConnectionLimits(
        settings.http.http_max_connections,
        settings.http.http_max_connections_per_client,
        settings.http.http_header_timeout_s,
        settings,
    )
    return type("BoundGuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})
