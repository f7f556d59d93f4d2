"""Logging in and out (``/login``, ``/logout``) and the home page (``/``: where a role
starts). A failed login is one message whatever went wrong; too many per username and
address are refused (429) before the password is checked (:mod:`cxr_orient.users`)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from cxr_orient.users import LoginRefused, LoginThrottled, UserInfo, authenticate
from service.clients import client_address
from service.deps import ROLE_CAN, CheckedForm, SessionDep, SettingsDep, current_user
from service.pages import page
from service.sessions import log_in, log_out

router = APIRouter(include_in_schema=False)
logger = logging.getLogger(__name__)


def start_page(user: UserInfo) -> str:
    can = ROLE_CAN[user.role]
    return "/review" if "review" in can else "/audit"


def _safe_next(value: str | None) -> str | None:
    """Only a path of this site (no scheme, no //host): no open redirect."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return None


@router.get("/")
def home(user: Annotated[UserInfo | None, Depends(current_user)]) -> Response:
    return RedirectResponse(start_page(user) if user else "/login", status_code=303)


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    return page(request, "login.html", next_path=_safe_next(next) or "")


@router.post("/login")
def login(
    request: Request, form: CheckedForm, settings: SettingsDep, session: SessionDep
) -> Response:
    username = form.get("username", "")
    next_path = _safe_next(form.get("next"))
    address = client_address(request, settings)
    try:
        user = authenticate(
            session,
            username=username,
            password=form.get("password", ""),
            address=address,
            max_failures=settings.http.login_max_failures,
            window_s=settings.http.login_window_s,
        )
    except LoginThrottled as exc:
        logger.warning("login throttled for a username from %s", address)
        return page(
            request, "login.html", status_code=429, error=str(exc), next_path=next_path or ""
        )
    except LoginRefused as exc:
        session.commit()  # the failure counts, whatever the response
        logger.info("login refused from %s", address)
        return page(
            request, "login.html", status_code=401, error=str(exc), next_path=next_path or ""
        )
    log_in(request, user)
    logger.info("login: %s (%s) from %s", user.username, user.role.value, address)
    return RedirectResponse(next_path or start_page(user), status_code=303)


@router.post("/logout")
def logout(request: Request, form: CheckedForm) -> Response:
    log_out(request)
    return RedirectResponse("/login", status_code=303)
