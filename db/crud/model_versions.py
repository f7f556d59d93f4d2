"""Model versions: registration, the one active version, promotions and their events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import ModelEvent, ModelVersion, utcnow


def active_model_version(session: Session) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion)
        .where(ModelVersion.is_active.is_(True))
        .order_by(ModelVersion.activated_at.desc())
        .limit(1)
    )


def find_model_version(session: Session, *, name: str) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.name == name))


def get_model_version(session: Session, *, version_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def list_model_versions(session: Session) -> list[ModelVersion]:
    """Every registered version, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))


def previously_active_model_version(session: Session) -> ModelVersion | None:
    """The retired version that was activated most recently: what a rollback restores."""
    return session.scalar(
        select(ModelVersion)
        .where(ModelVersion.state == "retired", ModelVersion.activated_at.is_not(None))
        .order_by(ModelVersion.activated_at.desc())
        .limit(1)
    )


def highest_trained_label_id(session: Session) -> int:
    """The newest label any registered version was trained with (0 when none)."""
    return max(
        (
            int(v.training.get("highest_label_id", 0) or 0)
            for v in session.scalars(select(ModelVersion))
        ),
        default=0,
    )


def register_model_version(
    session: Session,
    *,
    name: str,
    architecture: str,
    file_path: str,
    sha256: str,
    input_size: int,
    labels: Sequence[str],
    temperature: float,
    review_threshold: float,
    metrics: dict[str, Any],
    training: dict[str, Any],
    actor: str,
    reason: str,
) -> ModelVersion:
    version = ModelVersion(
        name=name,
        architecture=architecture,
        file_path=file_path,
        sha256=sha256,
        input_size=input_size,
        labels=list(labels),
        temperature=temperature,
        review_threshold=review_threshold,
        metrics=metrics,
        training=training,
        state="candidate",
        is_active=False,
    )
    session.add(version)
    session.flush()
    record_model_event(
        session,
        model_version_id=version.id,
        action="register",
        actor=actor,
        reason=reason,
        details={"sha256": sha256, "file_path": file_path},
    )
    return version


def activate_model_version(
    session: Session,
    *,
    version: ModelVersion,
    actor: str,
    reason: str,
    action: str = "promote",
    details: dict[str, Any] | None = None,
) -> None:
    """Make ``version`` the one active model; the previous one is retired."""
    previous = active_model_version(session)
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.is_active.is_(True), ModelVersion.id != version.id)
        .values(is_active=False, state="retired")
        .execution_options(synchronize_session="fetch")
    )
    version.is_active = True
    version.state = "active"
    version.activated_at = utcnow()
    record_model_event(
        session,
        model_version_id=version.id,
        action=action,
        actor=actor,
        reason=reason,
        details={"previous": previous.name if previous else None, **(details or {})},
    )


def reject_model_version(
    session: Session,
    *,
    version: ModelVersion,
    actor: str,
    reason: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Mark a candidate that lost at the gate as rejected, with the figures why."""
    version.state = "rejected"
    record_model_event(
        session,
        model_version_id=version.id,
        action="reject",
        actor=actor,
        reason=reason,
        details=details,
    )


def record_model_event(
    session: Session,
    *,
    model_version_id: int,
    action: str,
    actor: str,
    reason: str,
    details: dict[str, Any] | None = None,
) -> ModelEvent:
    event = ModelEvent(
        model_version_id=model_version_id,
        action=action,
        actor=actor,
        reason=reason,
        details=details or {},
    )
    session.add(event)
    session.flush()
    return event
