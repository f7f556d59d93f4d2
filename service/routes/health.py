"""Liveness (``/healthz``: the process answers) and readiness (``/readyz``: the database
and the broker answer too)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from db import crud
from db.session import session_scope
from worker.dispatch import broker_reachable

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _database_ok() -> bool:
    try:
        with session_scope() as session:
            crud.ping(session)
        return True
    except Exception as exc:  # any driver error means not ready
        logger.warning("readiness: database unreachable (%s)", type(exc).__name__)
        return False


@router.get("/readyz")
async def readyz() -> JSONResponse:
    database = await run_in_threadpool(_database_ok)
    broker = await run_in_threadpool(broker_reachable)
    ready = database and broker
    return JSONResponse(
        {"status": "ready" if ready else "not ready",
         "database": "ok" if database else "unreachable",
         "broker": "ok" if broker else "unreachable"},
        status_code=200 if ready else 503,
    )
