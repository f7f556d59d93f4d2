"""STOW-RS in (PS3.18 10.5): ``POST /dicom-web/studies[/{study}]``, bearer token with the
``stow`` scope.

The body is read as it arrives and each part handled once complete (held in memory
alone, bounded by the worker's largest file); the checks, the spool and the recording
are :mod:`cxr_orient.dicomnet.stow`. The access log is off (``service.server``): a URL
here names a study, and the one line per request logged below says only counts, codes
and the token's name.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from cxr_orient.dicomnet.multipart import (
    MultipartError,
    Part,
    RelatedStreamReader,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
    related_boundary,
)
from cxr_orient.dicomnet.policy import uid_problem
from cxr_orient.dicomnet.stow import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    PartOutcome,
    http_status,
    record_parts,
    response_json,
    spool_part,
)
from cxr_orient.intake import max_file_bytes
from cxr_orient.settings import Settings
from cxr_orient.tokens import TokenInfo
from service.deps import SettingsDep, require_scope
from service.limits import BodyTimeout, BodyTooLarge
from worker.dispatch import send_instances

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])
logger = logging.getLogger(__name__)
DICOM_JSON = "application/dicom+json"
StowToken = Annotated[TokenInfo, Depends(require_scope("stow"))]


def _problem(status_code: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code)


async def _store(
    request: Request, study: str | None, settings: Settings, token: TokenInfo
) -> Response:
    if study is not None and (problem := uid_problem(study)) is not None:
        # Refused before the body is read (and the connection closed: it is not read).
        return JSONResponse(
            {
                "detail": "the StudyInstanceUID of the URL is not a valid DICOM "
                f"UID (PS3.5 9.1): {problem}"
            },
            status_code=400,
            headers={"Connection": "close"},
        )
    try:
        boundary = related_boundary(request.headers.get("content-type"))
    except UnsupportedMediaTypeError as exc:
        return _problem(415, str(exc))
    except MultipartError as exc:
        return _problem(400, str(exc))
    # A Content-Length over CXR_STOW_MAX_REQUEST_MB was answered 413 by service.limits,
    # which also cuts a longer body as it streams (BodyTooLarge) or a late one (BodyTimeout).
    max_total = settings.http.stow_max_request_mb << 20
    reader = RelatedStreamReader(
        boundary,
        max_part_bytes=max_file_bytes(settings.intake.max_pixels),
        max_total_bytes=max_total,
    )
    outcomes: list[PartOutcome] = []
    cut_short: int | None = None

    async def handle(parts: list[Part]) -> None:
        for part in parts:
            outcomes.append(
                await run_in_threadpool(
                    spool_part, part, study_instance_uid=study, settings=settings
                )
            )

    try:
        async for chunk in request.stream():
            await handle(reader.feed(chunk))
        await handle(reader.finish())
    except (RequestTooLargeError, BodyTooLarge):
        cut_short = 413
        outcomes.append(PartOutcome(len(outcomes)).fail(OUT_OF_RESOURCES, "request_too_large"))
    except MultipartError as exc:
        if not outcomes:
            return _problem(400, str(exc))
        outcomes.append(PartOutcome(len(outcomes)).fail(CANNOT_UNDERSTAND, "bad_multipart"))
    except BodyTimeout:
        cut_short = 408  # what arrived whole is recorded; the rest was too slow
        outcomes.append(PartOutcome(len(outcomes)).fail(CANNOT_UNDERSTAND, "incomplete"))
    except ClientDisconnect:
        cut_short = 499  # nobody to answer; what arrived whole is still recorded below
    try:
        await run_in_threadpool(record_parts, outcomes, send=send_instances, settings=settings)
    except Exception as exc:  # database or broker down: nothing acknowledged, resend is safe
        logger.error("STOW-RS: recording failed (%s); answered 503", type(exc).__name__)
        return _problem(503, "the received instances could not be recorded; send them again")
    codes = Counter(o.code for o in outcomes)
    status_code = cut_short or http_status(outcomes)
    logger.info(
        "STOW-RS from token %r: %d parts, %d stored, HTTP %d, %s",
        token.name,
        len(outcomes),
        sum(1 for o in outcomes if o.stored),
        status_code,
        dict(sorted(codes.items())),
    )
    return JSONResponse(response_json(outcomes), status_code=status_code, media_type=DICOM_JSON)


@router.post(
    "/studies",
    summary="Store instances (STOW-RS)",
    responses={
        200: {"description": "all stored"},
        202: {"description": "some stored, some failed"},
        409: {"description": "none stored"},
    },
)
async def store_instances(request: Request, settings: SettingsDep, token: StowToken) -> Response:
    return await _store(request, None, settings, token)


@router.post(
    "/studies/{study}",
    summary="Store instances of one study (STOW-RS)",
    responses={
        200: {"description": "all stored"},
        202: {"description": "some stored, some failed"},
        409: {"description": "none stored"},
    },
)
async def store_study_instances(
    study: str, request: Request, settings: SettingsDep, token: StowToken
) -> Response:
    return await _store(request, study, settings, token)
