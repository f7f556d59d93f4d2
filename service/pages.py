"""Server-rendered pages: the Jinja2 templates beside the routes (``service/templates``)
and the one way a route answers with one, with the headers every page gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from service.sessions import csrf_token

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
#: Pages use inline style and one inline script (the keyboard shortcuts); nothing else
#: is loaded from anywhere, and no page may be framed (clickjacking a "label" button).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def page(
    request: Request, template: str, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """``template`` rendered with ``context`` plus the session's CSRF token."""
    context.setdefault("caller", None)
    response = TEMPLATES.TemplateResponse(
        request, template, {"csrf_token": csrf_token(request), **context}, status_code=status_code
    )
    response.headers.update(PAGE_HEADERS)
    return response
