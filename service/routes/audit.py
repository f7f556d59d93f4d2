"""The auditor's pages: answers per model version, review and disagreement rates over
time (server-rendered SVG), and every answer of one study with its history. A study is
found by its StudyInstanceUID sent in a form's body, then shown under its internal id:
no UID in any URL."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from cxr_orient.plots import Series, share_plot
from db import crud
from db.models import utcnow
from service.deps import Caller, CheckedForm, DbInt, SessionDep, page_user
from service.pages import page

router = APIRouter(prefix="/audit", include_in_schema=False)
Auditor = Annotated[Caller, Depends(page_user("audit"))]
DAYS = 90


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _overview(
    request: Request,
    caller: Caller,
    session: SessionDep,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    rates = crud.daily_rates(session, since=utcnow() - timedelta(days=DAYS))
    days = [r.day for r in rates]
    review_plot = share_plot(
        days,
        [
            Series(
                "flagged for review", [_share(r.needs_review, r.answers) for r in rates], "#c75b12"
            ),
            Series(
                "reviewed / flagged", [_share(r.reviewed, r.needs_review) for r in rates], "#2456c7"
            ),
        ],
        title="Review rate per day",
    )
    disagreement_plot = share_plot(
        days,
        [
            Series(
                "header disagrees",
                [_share(r.header_disagrees, r.header_known) for r in rates],
                "#a01010",
            ),
        ],
        title="Header disagreement per day",
    )
    return page(
        request,
        "audit.html",
        status_code=status_code,
        caller=caller,
        versions=crud.answers_per_version(session),
        days=DAYS,
        review_plot=review_plot,
        disagreement_plot=disagreement_plot,
        error=error,
    )


@router.get("")
def overview(request: Request, caller: Auditor, session: SessionDep) -> Response:
    return _overview(request, caller, session)


@router.post("/studies")
def find_study(
    request: Request, caller: Auditor, session: SessionDep, form: CheckedForm
) -> Response:
    uid = form.get("study_instance_uid", "").strip()
    study_id = crud.find_study_id(session, study_instance_uid=uid) if uid else None
    if study_id is None:
        return _overview(request, caller, session, error="no study with that UID", status_code=404)
    return RedirectResponse(f"/audit/studies/{study_id}", status_code=303)


@router.get("/studies/{study_id}")
def study(study_id: DbInt, request: Request, caller: Auditor, session: SessionDep) -> Response:
    if crud.get_study(session, study_id=study_id) is None:
        raise HTTPException(404, detail=f"no study {study_id}")
    return page(
        request,
        "study.html",
        caller=caller,
        study_id=study_id,
        study_answers=crud.study_answer_rows(session, study_id=study_id),
        history=crud.study_history(session, study_id=study_id),
    )
