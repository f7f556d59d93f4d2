"""What every request meets first: its URL checked, and an error nobody foresaw answered
500 without the request's values in the log.

- A path or query string with a control character (a NUL sent as ``%00``...) is a 400
  before any route runs: PostgreSQL refuses NUL in text, and no id or filter of ours
  holds one. Form fields are checked in ``service.deps.checked_form``, integers by
  ``service.deps.DbInt``.
- An exception no handler turned into an answer is logged as its type and the frames of
  its traceback only (file, line, function), never its message: a database error's
  message quotes the parameters, which may be what a user typed. Starlette and uvicorn
  would log it whole.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["EdgeMiddleware", "answer_json"]

logger = logging.getLogger(__name__)
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def _bad_url(scope: Scope) -> bool:
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
    return bool(
        _CONTROL.search(unquote_to_bytes(raw_path))
        or _CONTROL.search(unquote_to_bytes(scope.get("query_string", b"")))
    )


async def answer_json(send: Send, status: int, detail: str, *, close: bool = False) -> None:
    """A ``{"detail": ...}`` answer sent straight from a middleware (no route ran);
    ``close``: the connection is not reused (its body was not read)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class EdgeMiddleware:
    """The URL check and the quiet last-resort 500 (above)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _bad_url(scope):
            logger.warning("400: a control character in the URL of a %s request", scope["method"])
            await answer_json(send, 400, "the URL holds a control character")
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # the last resort: answer, and log without values
            frames = "".join(traceback.format_tb(exc.__traceback__))
            logger.error(
                "500 on a %s request: %s (message not logged: it may quote the request)\n%s",
                scope["method"],
                type(exc).__name__,
                frames,
            )
            if not started:
                await answer_json(send, 500, "internal error")
