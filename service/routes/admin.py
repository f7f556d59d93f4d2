"""The admin's pages: the users (list, add, disable). Admins only; a reviewer or an
auditor gets 403. The same is ``cxr-orient user`` on the command line."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from cxr_orient.users import UserError, create_user, disable_user, list_users
from db import crud
from db.models import UserRole
from service.deps import Caller, CheckedForm, DbInt, SessionDep, page_user
from service.pages import page

router = APIRouter(prefix="/admin", include_in_schema=False)
Admin = Annotated[Caller, Depends(page_user("admin"))]


def _users_page(
    request: Request,
    caller: Caller,
    session: SessionDep,
    *,
    error: str | None = None,
    message: str | None = None,
    status_code: int = 200,
) -> Response:
    return page(
        request,
        "users.html",
        status_code=status_code,
        caller=caller,
        users=list_users(session),
        roles=[r.value for r in UserRole],
        error=error,
        message=message,
    )


@router.get("/users")
def users(request: Request, caller: Admin, session: SessionDep) -> Response:
    return _users_page(request, caller, session)


@router.post("/users")
def add_user(request: Request, caller: Admin, session: SessionDep, form: CheckedForm) -> Response:
    try:
        made = create_user(
            session,
            username=form.get("username", ""),
            role=form.get("role", ""),
            password=form.get("password") or None,
        )
    except UserError as exc:
        session.rollback()
        return _users_page(request, caller, session, error=str(exc), status_code=400)
    return _users_page(request, caller, session, message=f"added {made.username}")


@router.post("/users/{user_id}/disable")
def disable(user_id: DbInt, caller: Admin, session: SessionDep, form: CheckedForm) -> Response:
    row = crud.get_user(session, user_id=user_id)
    if row is None:
        raise HTTPException(404, detail=f"no user {user_id}")
    if caller.user is not None and row.id == caller.user.id:
        raise HTTPException(400, detail="you cannot disable yourself")
    try:
        disable_user(session, username=row.username)
    except UserError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    return RedirectResponse("/admin/users", status_code=303)
