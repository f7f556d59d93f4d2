"""The FastAPI application: its routers, the session middleware, and how errors of the
pages are answered."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from cxr_orient.review import RenderCache
from cxr_orient.settings import get_settings
from service.deps import ROLE_CAN, Caller, LoginRequired, current_user
from service.edge import EdgeMiddleware
from service.limits import BodyLimitsMiddleware
from service.pages import page
from service.routes import acceptance, admin, api, audit, auth, health, metrics, review, stow
from service.sessions import session_key

SESSION_COOKIE = "cxr_session"


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="cxr-orient",
        summary="Frontal vs lateral classification of chest radiographs: STOW-RS in, the "
        "review queue and audit figures, health.",
        version="0.1.0",
    )
    app.state.render_cache = RenderCache()
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_key(settings),
        session_cookie=SESSION_COOKIE,
        max_age=settings.http.session_max_age_s,
        same_site="lax",
        https_only=settings.http.session_cookie_secure,
    )
    # Added last, so outermost: no body reaches a parser past its route's limits, and
    # the URL check and the quiet last-resort 500 come before everything.
    app.add_middleware(BodyLimitsMiddleware, settings=settings)
    app.add_middleware(EdgeMiddleware)
    for module in (health, stow, metrics, auth, review, acceptance, audit, admin, api):
        app.include_router(module.router)

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={exc.next_path}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def error_page(request: Request, exc: StarletteHTTPException) -> Response:
        """A page's error as a page; the API's (and STOW-RS's) as JSON."""
        wants_html = "text/html" in request.headers.get("accept", "")
        if not wants_html or request.url.path.startswith(("/api/", "/dicom-web/")):
            return await http_exception_handler(request, exc)
        user = current_user(request, settings)
        caller = Caller(user.username, ROLE_CAN[user.role], user=user) if user else None
        return page(
            request,
            "error.html",
            status_code=exc.status_code,
            code=exc.status_code,
            caller=caller,
            detail=exc.detail,
        )

    return app
