"""The review pages: the queue (``/review``), one instance (``/review/items/{id}``),
recording a decision (``POST /review/items/{id}/label``: a ``labels`` row, then the next
instance) and confirming a fault the answer found (``POST /review/items/{id}/correct``,
with CXR_CORRECTION_DESTINATIONS: a correction back to PACS, decided by the reviewer,
and the answer's view as the reviewer's label). URLs carry internal ids only, never a
UID."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from cxr_orient.dicomnet.corrections.decisions import correct_instance, offer_for
from cxr_orient.errors import CorrectionError
from cxr_orient.review import ReviewError, next_for_review, record_review
from db import crud
from db.crud import REVIEW_FILTERS
from service.deps import Caller, CheckedForm, DbInt, SessionDep, SettingsDep, page_user
from service.pages import page

router = APIRouter(prefix="/review", include_in_schema=False)
Reviewer = Annotated[Caller, Depends(page_user("review"))]
FILTER_NAMES = {
    "flagged": "Flagged for review",
    "disagree": "Header disagrees",
    "out_of_scope": "Out of scope",
    "uid_conflict": "UID conflicts",
}
#: (button id, decision, projection, name, key): a frontal with or without its projection.
DECISION_BUTTONS = [
    ("frontal", "frontal", "", "Frontal", "f"),
    ("frontal-pa", "frontal", "PA", "Frontal PA", "p"),
    ("frontal-ap", "frontal", "AP", "Frontal AP", "a"),
    ("lateral", "lateral", "", "Lateral", "l"),
    ("not_chest", "not_chest", "", "Not a chest radiograph", "n"),
]
PAGE_SIZE = 50


def _kind(value: str | None) -> str:
    return value if value in REVIEW_FILTERS else "flagged"


@router.get("")
def queue(
    request: Request,
    caller: Reviewer,
    session: SessionDep,
    filter: str | None = None,
    after: DbInt = 0,
) -> Response:
    kind = _kind(filter)
    items = crud.review_queue(session, kind=kind, after=max(0, after), limit=PAGE_SIZE + 1)
    return page(
        request,
        "queue.html",
        caller=caller,
        kind=kind,
        filters=list(FILTER_NAMES.items()),
        items=items[:PAGE_SIZE],
        more=len(items) > PAGE_SIZE,
    )


@router.get("/next")
def next_item(
    caller: Reviewer, session: SessionDep, filter: str | None = None, after: DbInt = 0
) -> Response:
    kind = _kind(filter)
    found = next_for_review(session, kind=kind, after=after)
    target = f"/review/items/{found}?filter={kind}" if found else f"/review?filter={kind}"
    return RedirectResponse(target, status_code=303)


@router.get("/items/{instance_id}")
def item(
    instance_id: DbInt,
    request: Request,
    caller: Reviewer,
    session: SessionDep,
    settings: SettingsDep,
    filter: str | None = None,
) -> Response:
    kind = _kind(filter)
    found = crud.review_item(session, instance_id=instance_id)
    if found is None:
        raise HTTPException(404, detail=f"no instance {instance_id}")
    return page(
        request,
        "item.html",
        caller=caller,
        kind=kind,
        item=found,
        labels=crud.labels_of(session, instance_id=instance_id),
        decisions=DECISION_BUTTONS,
        offer=offer_for(session, instance_id=instance_id, corrections=settings.corrections),
        corrections=crud.correction_rows(session, instance_id=instance_id),
        next_id=next_for_review(session, kind=kind, after=instance_id),
    )


@router.post("/items/{instance_id}/label")
def label(instance_id: DbInt, caller: Reviewer, session: SessionDep, form: CheckedForm) -> Response:
    kind = _kind(form.get("filter"))
    try:
        record_review(
            session,
            instance_id=instance_id,
            decision=form.get("decision", ""),
            annotator=caller.annotator,
            projection=form.get("projection") or None,
        )
    except ReviewError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    session.flush()
    found = next_for_review(session, kind=kind, after=instance_id)
    target = f"/review/items/{found}?filter={kind}" if found else f"/review?filter={kind}"
    return RedirectResponse(target, status_code=303)


@router.post("/items/{instance_id}/correct")
def correct(
    instance_id: DbInt,
    caller: Reviewer,
    session: SessionDep,
    settings: SettingsDep,
    form: CheckedForm,
) -> Response:
    """The reviewer confirms the fault: the correction is recorded (sent by the workers'
    outbox run within CXR_OUTBOX_INTERVAL_S) and the answer's view is their label."""
    kind = _kind(form.get("filter"))
    found = crud.review_item(session, instance_id=instance_id)
    if found is None or found.answer is None:
        raise HTTPException(404, detail=f"no answer for instance {instance_id}")
    try:
        correct_instance(
            session,
            instance_id=instance_id,
            via="review",
            decided_by=f"reviewer {caller.annotator}",
            corrections=settings.corrections,
        )
        record_review(
            session,
            instance_id=instance_id,
            decision=found.answer.label,
            annotator=caller.annotator,
        )
    except (CorrectionError, ReviewError) as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    session.flush()
    after = next_for_review(session, kind=kind, after=instance_id)
    target = f"/review/items/{after}?filter={kind}" if after else f"/review?filter={kind}"
    return RedirectResponse(target, status_code=303)
