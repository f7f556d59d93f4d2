"""The JSON API of the review page (``/api/v1``): the same queue, items, decisions and
audit figures, for scripts (a bearer token with the ``review`` or ``audit`` scope) and for
the pages themselves (the session; unsafe methods with the X-CSRF-Token header). Its
OpenAPI document is ``/openapi.json``. The images are here too, shared by both."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from cxr_orient.review import DECISIONS, RenderCache, ReviewError, record_review
from db import crud
from db.models import utcnow
from service.deps import Caller, DbInt, SessionDep, SettingsDep, api_caller

router = APIRouter(prefix="/api/v1", tags=["review"])
ReviewCaller = Annotated[Caller, Depends(api_caller("review"))]
AuditCaller = Annotated[Caller, Depends(api_caller("audit"))]
#: The queue filters (db.crud.REVIEW_FILTERS).
Filter = Literal["flagged", "disagree", "out_of_scope", "uid_conflict"]


class ReviewItemOut(BaseModel):
    """An instance awaiting review with its current answer (no identifiers, no UIDs)."""

    instance_id: int
    study_id: int | None
    status: str
    modality: str | None
    header_view: str | None
    error_code: str | None
    file_purged: bool
    prediction_id: int | None
    label: str | None
    confidence: float | None
    p_lateral: float | None
    header_agrees: bool | None
    review_reason: str | None
    unusual_score: float | None
    model_version: str | None
    answered_at: Any | None
    enqueued_at: Any
    projection: str | None
    p_ap: float | None
    projection_agrees: bool | None


class QueueOut(BaseModel):
    filter: str
    items: list[ReviewItemOut]
    #: The ``after`` for the next page (None: this was the last).
    next_after: int | None


class Decision(BaseModel):
    decision: Literal["frontal", "lateral", "not_chest"] = Field(
        description="what the image is: frontal, lateral, or not a chest radiograph"
    )
    projection: Literal["PA", "AP"] | None = Field(
        default=None, description="for a frontal: PA or AP, when the reviewer can tell"
    )


class LabelOut(BaseModel):
    label_id: int
    instance_id: int
    label: str
    source: str
    annotator: str
    projection: str | None = None


@router.get("/review/queue", response_model=QueueOut, summary="Instances awaiting review")
def queue(
    caller: ReviewCaller,
    session: SessionDep,
    filter: Filter = "flagged",
    after: DbInt = 0,
    limit: DbInt = 50,
) -> QueueOut:
    limit = min(max(limit, 1), 500)
    items = crud.review_queue(session, kind=filter, after=max(0, after), limit=limit + 1)
    shown = items[:limit]
    return QueueOut(
        filter=filter,
        items=[ReviewItemOut(**i.as_dict()) for i in shown],
        next_after=shown[-1].instance_id if len(items) > limit else None,
    )


@router.get(
    "/review/items/{instance_id}",
    response_model=ReviewItemOut,
    summary="One instance with its current answer",
)
def item(instance_id: DbInt, caller: ReviewCaller, session: SessionDep) -> ReviewItemOut:
    found = crud.review_item(session, instance_id=instance_id)
    if found is None:
        raise HTTPException(404, detail=f"no instance {instance_id}")
    return ReviewItemOut(**found.as_dict())


@router.get(
    "/review/items/{instance_id}/images/{kind}.png",
    responses={200: {"content": {"image/png": {}}}},
    summary="The model's 256 px input (model) or the larger windowed image (large)",
)
def image(
    instance_id: DbInt,
    kind: Literal["model", "large"],
    request: Request,
    caller: ReviewCaller,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    instance = crud.get_instance(session, instance_id=instance_id)
    if instance is None:
        raise HTTPException(404, detail=f"no instance {instance_id}")
    cache: RenderCache = request.app.state.render_cache
    rendered = cache.get(instance, kind=kind, settings=settings)
    body = rendered.png
    headers = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}
    if rendered.unavailable:
        headers["X-Image-Unavailable"] = rendered.unavailable.replace("\n", " ")
    return Response(body, media_type="image/png", headers=headers)


@router.post(
    "/review/items/{instance_id}/label",
    response_model=LabelOut,
    status_code=201,
    summary="Record a reviewer's decision as a label (source review)",
)
def label(
    instance_id: DbInt, decision: Decision, caller: ReviewCaller, session: SessionDep
) -> LabelOut:
    try:
        row = record_review(
            session,
            instance_id=instance_id,
            decision=decision.decision,
            annotator=caller.annotator,
            projection=decision.projection,
        )
    except ReviewError as exc:
        raise HTTPException(404 if "no instance" in str(exc) else 400, detail=str(exc)) from exc
    return LabelOut(
        label_id=row.id,
        instance_id=instance_id,
        label=DECISIONS[decision.decision].value,
        source=row.source,
        annotator=caller.annotator,
        projection=row.projection,
    )


@router.get("/audit/versions", tags=["audit"], summary="Answers per model version")
def versions(caller: AuditCaller, session: SessionDep) -> list[dict[str, Any]]:
    return [v.as_dict() for v in crud.answers_per_version(session)]


@router.get(
    "/audit/rates",
    tags=["audit"],
    summary="Per day: answers, flagged, header disagreements, reviews",
)
def rates(caller: AuditCaller, session: SessionDep, days: DbInt = 90) -> list[dict[str, Any]]:
    since = utcnow() - timedelta(days=min(max(days, 1), 3650))
    return [r.as_dict() for r in crud.daily_rates(session, since=since)]


@router.get(
    "/audit/studies/{study_id}",
    tags=["audit"],
    summary="Every answer of a study's instances with its history, and labels",
)
def study(study_id: DbInt, caller: AuditCaller, session: SessionDep) -> dict[str, Any]:
    if crud.get_study(session, study_id=study_id) is None:
        raise HTTPException(404, detail=f"no study {study_id}")
    return {
        "study_id": study_id,
        "study_answers": [
            {
                c: getattr(a, c)
                for c in (
                    "sequence",
                    "instance_count",
                    "frontal_count",
                    "lateral_count",
                    "needs_review_count",
                    "failed_count",
                    "out_of_scope_count",
                    "flags",
                    "model_versions",
                    "created_at",
                )
            }
            for a in crud.study_answer_rows(session, study_id=study_id)
        ],
        "instances": [h.as_dict() for h in crud.study_history(session, study_id=study_id)],
    }
