"""What goes back to PACS: the outbox (one row per object and destination), the audit of
each IOCM correction it carries, and each destination's health."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import UID, Base, enum_column, utcnow

__all__ = ["Correction", "CorrectionAction", "OutboxDestination", "OutboxMessage", "OutboxStatus"]


class OutboxStatus(enum.StrEnum):
    #: Not delivered yet: due at ``next_attempt_at`` (claimed rows are leased forward).
    pending = "pending"
    sent = "sent"
    #: Refused for good (a refusal that retrying cannot fix, or a source file that is
    #: gone); ``cxr-orient outbox retry`` makes it pending again.
    failed = "failed"


class OutboxMessage(Base):
    """What goes back to one destination, added in the transaction that decided it; a
    sender delivers and retries. Either one answer's Structured Report
    (CXR_RESULT_DESTINATIONS: ``prediction_id`` set) or one correction's objects
    (CXR_CORRECTION_DESTINATIONS: ``correction_id`` set; a corrected replacement and its
    rejection note, or the rejection note of a reversal), never both."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("prediction_id", "destination"),
        UniqueConstraint("correction_id", "destination"),
        CheckConstraint("(prediction_id IS NULL) != (correction_id IS NULL)", name="one_source"),
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int | None] = mapped_column(
        ForeignKey("predictions.id", ondelete="RESTRICT")
    )
    correction_id: Mapped[int | None] = mapped_column(
        ForeignKey("corrections.id", ondelete="RESTRICT"), index=True
    )
    #: The destination's canonical URL (``dicom://AET@host:port``, ``dicomweb+http://...``).
    destination: Mapped[str] = mapped_column(String(512))
    #: Fixed when the row is made: every (re-)send is the same object, stored once.
    #: The same for every destination of one answer. For a correction: the replacement's
    #: UID (a reversal: its rejection note's).
    sr_sop_instance_uid: Mapped[str] = mapped_column(UID)
    status: Mapped[OutboxStatus] = mapped_column(
        enum_column(OutboxStatus, "outbox_status"), default=OutboxStatus.pending
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CorrectionAction(enum.StrEnum):
    #: A corrected replacement of the original and a rejection note of the original.
    correct = "correct"
    #: A rejection note of an earlier correction's replacement (the correction undone).
    reverse = "reverse"


class Correction(Base):
    """One correction sent back to PACS (IHE IOCM), the audit of it: what was wrong, what
    the replacement says, who or which rule decided and when; its delivery is its outbox
    rows (``outbox.correction_id``). A reversal is a row of its own naming the correction
    it undoes. ``rejection_note_uid`` is unique: one note per rejected object."""

    __tablename__ = "corrections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    action: Mapped[CorrectionAction] = mapped_column(
        enum_column(CorrectionAction, "correction_action")
    )
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="RESTRICT"), index=True
    )
    #: The answer that found the fault (a reversal: the corrected answer's).
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="RESTRICT"))
    #: The correction a reversal undoes (NULL for a correction).
    reverses_id: Mapped[int | None] = mapped_column(
        ForeignKey("corrections.id", ondelete="RESTRICT"), unique=True
    )
    #: What was wrong, comma-separated: ``turned``, ``mirrored``, ``header_view``,
    #: ``header_projection``.
    faults: Mapped[str] = mapped_column(String(128))
    #: How the original is stored (the answer's) and the view the replacement states.
    rotation: Mapped[int] = mapped_column(SmallInteger)
    mirrored: Mapped[bool] = mapped_column(Boolean)
    view: Mapped[str] = mapped_column(String(2))
    #: The bytes the replacement is made from (the original's file when decided).
    file_sha256: Mapped[str] = mapped_column(String(64))
    original_sop_instance_uid: Mapped[str] = mapped_column(UID)
    replacement_sop_instance_uid: Mapped[str] = mapped_column(UID)
    rejection_note_uid: Mapped[str] = mapped_column(UID, unique=True)
    #: ``rule`` (CXR_CORRECTION_RULES) or ``review`` (a reviewer's key) or ``cli``.
    decided_via: Mapped[str] = mapped_column(String(16))
    #: Who, in words: ``model compact-invariant-64-v3`` or ``reviewer alice``.
    decided_by: Mapped[str] = mapped_column(String(128))
    #: When (the replacement's and note's creation date and time).
    decided_at: Mapped[datetime] = mapped_column()
    #: Why, in words (the reversal's reason).
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxDestination(Base):
    """One result destination's health, shared by every sender: while it is down its
    consecutive failures grow the wait before anyone tries it again (capped); a success
    resets it. Made on a destination's first failure."""

    __tablename__ = "outbox_destinations"

    #: The canonical URL, as in ``outbox.destination``.
    destination: Mapped[str] = mapped_column(String(512), primary_key=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    #: No row of this destination is claimed before this (None: no backoff).
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    #: The cause of the last failure ("connection refused", "association rejected"...).
    last_error: Mapped[str | None] = mapped_column(Text)
    #: When the current run of failures began (None while it is up).
    failing_since: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
