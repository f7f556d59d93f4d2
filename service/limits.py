"""Every request body bounded before anything parses it: a size and a deadline per route
(STOW-RS: CXR_STOW_MAX_REQUEST_MB and CXR_STOW_BODY_TIMEOUT_S; every other route, the
forms and the JSON API: CXR_HTTP_MAX_BODY_KB and CXR_HTTP_BODY_TIMEOUT_S).

An ASGI middleware, so that nothing below it (Starlette's form parser and its temporary
files, FastAPI's JSON parsing, the STOW-RS part reader) ever sees more than the route's
limit: a Content-Length over it is answered 413 before the body is read, a chunked (or
lying) body is counted as it streams and cut at the limit (:class:`BodyTooLarge`, an
HTTP 413), and a body that has not arrived whole by the deadline ends in 408
(:class:`BodyTimeout`). Either answer closes the connection and is logged (with the
route's kind and the client's address by :mod:`service.clients`' rule, never the path:
a DICOMweb path names a study).
The header deadline and the connection cap are the protocol's
(:mod:`service.connections`), which also closes a connection whose body outlives this
deadline after the answer went out.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cxr_orient.settings import Settings
from service.clients import scope_client_address
from service.edge import answer_json

__all__ = ["BodyLimits", "BodyLimitsMiddleware", "BodyTimeout", "BodyTooLarge", "limits_for"]

logger = logging.getLogger(__name__)
STOW_PREFIX = "/dicom-web/"
CLOSE = (b"connection", b"close")


@dataclass(frozen=True)
class BodyLimits:
    """A route's bounds: ``kind`` names it in logs (``stow`` or ``form``)."""

    kind: str
    max_bytes: int
    timeout_s: float


def limits_for(path: str, settings: Settings) -> BodyLimits:
    """The bounds of the route at ``path``: STOW-RS's, or the small ones of the rest."""
    if path.startswith(STOW_PREFIX):
        return BodyLimits(
            "stow", settings.http.stow_max_request_mb << 20, settings.http.stow_body_timeout_s
        )
    return BodyLimits(
        "form", settings.http.http_max_body_kb << 10, settings.http.http_body_timeout_s
    )


class BodyTooLarge(HTTPException):
    """The body went over its route's limit while it streamed (413)."""

    def __init__(self, limits: BodyLimits) -> None:
        super().__init__(
            413,
            detail=f"request body over {limits.max_bytes} bytes",
            headers={"Connection": "close"},
        )


class BodyTimeout(HTTPException):
    """The body did not arrive whole within its route's deadline (408)."""

    def __init__(self, limits: BodyLimits) -> None:
        super().__init__(
            408,
            detail=f"request body not received within {limits.timeout_s:g} s",
            headers={"Connection": "close"},
        )


class BodyLimitsMiddleware:
    """Applies :func:`limits_for` to every HTTP request."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = limits_for(scope["path"], self.settings)
        client = scope_client_address(scope, self.settings)
        declared = _content_length(scope)
        if declared is not None and (declared < 0 or declared > limits.max_bytes):
            logger.warning(
                "413 from %s: %s request declares %d bytes, over %d",
                client,
                limits.kind,
                declared,
                limits.max_bytes,
            )
            await answer_json(send, 413, f"request body over {limits.max_bytes} bytes", close=True)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.timeout_s
        received = 0
        chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
        body_done = (
            scope["method"] in {"GET", "HEAD", "OPTIONS"} and declared in (None, 0) and not chunked
        )
        refused: BodyTooLarge | BodyTimeout | None = None

        async def bounded_receive() -> Message:
            nonlocal received, body_done, refused
            if body_done:
                return await receive()  # after the body: only a disconnect can come
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                refused = BodyTimeout(limits)
                logger.warning(
                    "408 from %s: %s request body not whole after %g s (%d bytes)",
                    client,
                    limits.kind,
                    limits.timeout_s,
                    received,
                )
                raise refused from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limits.max_bytes:
                    refused = BodyTooLarge(limits)
                    logger.warning(
                        "413 from %s: %s request body went over %d bytes",
                        client,
                        limits.kind,
                        limits.max_bytes,
                    )
                    raise refused
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def closing_send(message: Message) -> None:
            # A refused body is never read to its end: the connection cannot be reused.
            if message["type"] == "http.response.start" and refused is not None:
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        await self.app(scope, bounded_receive, closing_send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None
