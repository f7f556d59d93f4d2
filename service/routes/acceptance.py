"""The acceptance queues on the review page: the plans (``/review/acceptance``), one
plan's films (``/review/acceptance/{plan}``), one film (``.../items/{id}``) and its
decision (a ``labels`` row like the review queue's, plus PA/AP for a frontal). The
review is blind: these pages show neither the model's answer nor the header's view."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from cxr_orient.acceptance import AcceptanceError, record_acceptance_label
from db import crud
from service.deps import Caller, CheckedForm, DbInt, SessionDep, page_user
from service.pages import page

router = APIRouter(prefix="/review/acceptance", include_in_schema=False)
Reviewer = Annotated[Caller, Depends(page_user("review"))]
#: (decision, button, key): the label and, for a frontal, PA or AP.
DECISION_BUTTONS = [
    ("frontal_pa", "Frontal, PA", "p"),
    ("frontal_ap", "Frontal, AP", "a"),
    ("frontal", "Frontal, PA/AP unclear", "f"),
    ("lateral", "Lateral", "l"),
    ("not_chest", "Not a chest radiograph", "n"),
]


def _plan_or_404(session: SessionDep, plan_id: int) -> crud.PlanProgress:
    for found in crud.acceptance_plans(session):
        if found.plan.id == plan_id:
            return found
    raise HTTPException(404, detail=f"no acceptance plan {plan_id}")


@router.get("")
def plans(request: Request, caller: Reviewer, session: SessionDep) -> Response:
    return page(
        request, "acceptance_plans.html", caller=caller, plans=crud.acceptance_plans(session)
    )


@router.get("/{plan_id}")
def plan_queue(plan_id: DbInt, request: Request, caller: Reviewer, session: SessionDep) -> Response:
    progress = _plan_or_404(session, plan_id)
    return page(
        request,
        "acceptance_queue.html",
        caller=caller,
        progress=progress,
        items=crud.acceptance_items(session, plan_id=plan_id),
        first=crud.next_unlabelled_item(session, plan_id=plan_id, after=0),
    )


@router.get("/{plan_id}/items/{instance_id}")
def item(
    plan_id: DbInt, instance_id: DbInt, request: Request, caller: Reviewer, session: SessionDep
) -> Response:
    progress = _plan_or_404(session, plan_id)
    found = crud.acceptance_item(session, plan_id=plan_id, instance_id=instance_id)
    if found is None:
        raise HTTPException(404, detail=f"instance {instance_id} is not in plan {plan_id}")
    labels = crud.labels_of(session, instance_id=instance_id)
    given = next((label for label in labels if label.id == found.label_id), None)
    return page(
        request,
        "acceptance_item.html",
        caller=caller,
        progress=progress,
        item=found,
        given=given,
        decisions=DECISION_BUTTONS,
        next_id=crud.next_unlabelled_item(session, plan_id=plan_id, after=instance_id),
    )


@router.post("/{plan_id}/items/{instance_id}/label")
def label(
    plan_id: DbInt, instance_id: DbInt, caller: Reviewer, session: SessionDep, form: CheckedForm
) -> Response:
    try:
        record_acceptance_label(
            session,
            plan_id=plan_id,
            instance_id=instance_id,
            decision=form.get("decision", ""),
            annotator=caller.annotator,
        )
    except AcceptanceError as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    found = crud.next_unlabelled_item(session, plan_id=plan_id, after=instance_id)
    target = (
        f"/review/acceptance/{plan_id}/items/{found}" if found else f"/review/acceptance/{plan_id}"
    )
    return RedirectResponse(target, status_code=303)
