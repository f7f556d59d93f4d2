"""Health: the database round trip, and the workers' heartbeats (who can classify now)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.models import WorkerHeartbeat, utcnow


def ping(session: Session) -> None:
    """One round trip to the database (readiness checks); raises when it is unreachable."""
    session.execute(select(1)).scalar_one()


def record_worker_heartbeat(
    session: Session,
    *,
    node: str,
    pool_processes: int,
    ready_processes: int,
    ready_at: datetime | None,
) -> None:
    """This worker's state, seen now (one row per node name)."""
    row = session.get(WorkerHeartbeat, node)
    if row is None:
        row = WorkerHeartbeat(node=node)
        session.add(row)
    row.pool_processes = pool_processes
    row.ready_processes = ready_processes
    row.ready_at = ready_at
    row.seen_at = utcnow()


def forget_worker(session: Session, *, node: str) -> None:
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.node == node))


#: A worker rewrites its heartbeat at least every 10 s; one older than this is gone.
HEARTBEAT_FRESH_S = 30.0


def ready_workers(session: Session, *, fresh_s: float = HEARTBEAT_FRESH_S) -> list[str]:
    """Nodes seen in the last ``fresh_s`` with a pool process that can classify now."""
    seen_after = utcnow() - timedelta(seconds=fresh_s)
    return list(
        session.scalars(
            select(WorkerHeartbeat.node)
            .where(WorkerHeartbeat.seen_at > seen_after, WorkerHeartbeat.ready_processes > 0)
            .order_by(WorkerHeartbeat.node)
        )
    )
