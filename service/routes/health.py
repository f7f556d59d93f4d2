"""Liveness (``/healthz``: the process answers) and readiness (``/readyz``: the database
and the broker answer too; it also says how many workers can classify now, from the
heartbeats their main processes keep in ``worker_heartbeats``).

No worker does not make the service unready: what it receives is recorded and queued,
and is classified once a worker is up. ``"workers": "none ready"`` says so."""

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


def _ready_workers() -> list[str] | None:
    """Workers that can classify now (fresh heartbeat, a pool process with its model);
    None when the database cannot say."""
    try:
        with session_scope() as session:
            return crud.ready_workers(session)
    except Exception:
        return None


@router.get("/readyz")
async def readyz() -> JSONResponse:
    database = await run_in_threadpool(_database_ok)
    broker = await run_in_threadpool(broker_reachable)
    workers = await run_in_threadpool(_ready_workers) if database else None
    ready = database and broker
    return JSONResponse(
        {
            "status": "ready" if ready else "not ready",
            "database": "ok" if database else "unreachable",
            "broker": "ok" if broker else "unreachable",
            "workers": (
                "unknown"
                if workers is None
                else f"{len(workers)} ready to classify"
                if workers
                else "none ready"
            ),
            "workers_ready": len(workers or []),
        },
        status_code=200 if ready else 503,
    )
