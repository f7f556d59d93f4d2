"""The audit schema: every instance, every answer, every model version, every label.

Rows are only ever added or moved forward in status; a new model's answer for
an instance is a new ``predictions`` row, never an update of an old one. (The one
exception: a uid conflict under ``CXR_UID_CONFLICT_POLICY=replace`` points an instance
at its new file; the old one is kept in the ``uid_conflicts`` row, and each prediction
names the bytes it was made on.)
Tables are created by Alembic migrations only (``cxr-orient db upgrade``).
What every table shares is in ``base``; the outbox, the corrections it carries and the
destinations' health in ``delivery``; everything is imported from here (``db.models``).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.models.base import NAMING_CONVENTION, UID, Base, utcnow
from db.models.base import enum_column as _enum
from db.models.delivery import (
    Correction,
    CorrectionAction,
    OutboxDestination,
    OutboxMessage,
    OutboxStatus,
)

__all__ = [
    "NAMING_CONVENTION",
    "UID",
    "UNFINISHED_STATUSES",
    "VIEW_LABELS",
    "AcceptanceItem",
    "AcceptancePlan",
    "ApiToken",
    "Base",
    "Correction",
    "CorrectionAction",
    "GroundTruthLabel",
    "Instance",
    "InstanceStatus",
    "LabelValue",
    "LoginFailure",
    "ModelEvent",
    "ModelVersion",
    "OrientationLabel",
    "OutboxDestination",
    "OutboxMessage",
    "OutboxStatus",
    "Prediction",
    "ReclassifyRun",
    "Study",
    "StudyAnswer",
    "UidConflict",
    "UidConflictAction",
    "User",
    "UserRole",
    "WorkerHeartbeat",
    "utcnow",
]


class InstanceStatus(enum.StrEnum):
    #: Received over the network, held until its study is quiet (``CXR_STUDY_QUIET_S``),
    #: then queued. Not a message in the broker: the release sweep sends it.
    waiting = "waiting"
    queued = "queued"
    processing = "processing"
    done = "done"
    failed = "failed"
    #: Refused by the accept policy (not a chest radiograph): recorded, never labelled,
    #: not a failure (``error_code`` out_of_scope, ``error_message`` names the rule).
    out_of_scope = "out_of_scope"


#: Statuses of an instance whose work is not finished (a study with one is incomplete).
UNFINISHED_STATUSES = (InstanceStatus.waiting, InstanceStatus.queued, InstanceStatus.processing)


class OrientationLabel(enum.StrEnum):
    frontal = "frontal"
    lateral = "lateral"


class LabelValue(enum.StrEnum):
    """What a ground-truth label may say: a view, or that the image is no chest
    radiograph at all (a reviewer's answer; never learnt as a view, it teaches the
    chest-or-not head: training.scope_refit)."""

    frontal = "frontal"
    lateral = "lateral"
    not_chest = "not_chest"


#: The label values that name a view (what training learns from).
VIEW_LABELS = (LabelValue.frontal, LabelValue.lateral)


class UidConflictAction(enum.StrEnum):
    """What ingest did with the conflicting file."""

    #: Not queued: the instance keeps its file and its answers.
    kept_first = "kept_first"
    #: The instance now refers to the new file and is queued again (earlier answers stay).
    replaced = "replaced"


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    #: PHI: the archive's patient identifier, kept for patient-grouped training splits.
    patient_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: When an instance held for the study's quiet period last arrived (network sources);
    #: NULL for studies only ever enqueued from folders.
    last_arrival_at: Mapped[datetime | None] = mapped_column()

    instances: Mapped[list[Instance]] = relationship(back_populates="study", lazy="raise")


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_status_updated", "status", "updated_at"),
        Index("ix_instances_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: NULL only for files refused before their header could be read (not DICOM...).
    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("studies.id", ondelete="RESTRICT"), index=True
    )
    #: NULL only for files refused before their header could be read.
    sop_instance_uid: Mapped[str | None] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str | None] = mapped_column(UID)
    file_path: Mapped[str] = mapped_column(Text)
    file_sha256: Mapped[str] = mapped_column(String(64))
    file_size: Mapped[int] = mapped_column(BigInteger)
    modality: Mapped[str | None] = mapped_column(String(16))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(UID)
    header_view_position: Mapped[str | None] = mapped_column(String(16))
    #: The header's Manufacturer and ManufacturerModelName (the device, a stratum of an
    #: acceptance plan); NULL when absent or for instances recorded before 0012.
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    manufacturer_model: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[InstanceStatus] = mapped_column(
        _enum(InstanceStatus, "instance_status"), default=InstanceStatus.queued
    )
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: When the spool purge deleted the instance's received file (CXR_SPOOL_KEEP_DAYS);
    #: NULL while the file is there (and always for files outside the spool). Work that
    #: needs the pixels afterwards fails with ``file_purged``.
    file_purged_at: Mapped[datetime | None] = mapped_column()
    #: The reclassify marker: the version that must answer this queued work (set by
    #: ``cxr-orient reclassify``, cleared when it answers or fails); NULL: the active one.
    target_model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT")
    )
    #: The claim is a lease: while ``processing``, the claim lapses at this time unless its
    #: worker renews it (CXR_LEASE_S, renewed every CXR_LEASE_RENEW_S); a lapsed claim is
    #: re-queued by the reaper. NULL when not claimed.
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    #: One token per claimed batch; only the holder of the current token may record the
    #: outcome (a worker that lost its lease, e.g. cut off from the database, records
    #: nothing). NULL when not claimed.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    #: ``<celery node name>:<pid>`` of the pool process that holds (or last held) the claim.
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    enqueued_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    study: Mapped[Study | None] = relationship(back_populates="instances", lazy="raise")


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    architecture: Mapped[str] = mapped_column(String(64))
    file_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    input_size: Mapped[int] = mapped_column(Integer)
    labels: Mapped[list[str]] = mapped_column(JSON)
    temperature: Mapped[float] = mapped_column(Float, default=1.0)
    review_threshold: Mapped[float] = mapped_column(Float, default=0.9)
    #: Evaluation figures (and, for retrained models, the data they saw).
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    training: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: candidate -> active -> retired; or candidate -> rejected.
    state: Mapped[str] = mapped_column(String(16), default="candidate")
    is_active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column()


class Prediction(Base):
    __tablename__ = "predictions"
    #: One answer per model version per file version (an instance's file can be replaced:
    #: see ``UidConflict``). The partial indexes walk the review queue's answers in
    #: instance (= arrival) order without reading the unflagged majority.
    __table_args__ = (
        UniqueConstraint("instance_id", "model_version_id", "file_sha256"),
        Index(
            "ix_predictions_review_queue",
            "instance_id",
            postgresql_where=text("needs_review"),
            sqlite_where=text("needs_review"),
        ),
        Index(
            "ix_predictions_header_disagrees",
            "instance_id",
            postgresql_where=text("header_agrees = false"),
            sqlite_where=text("header_agrees = 0"),
        ),
        Index("ix_predictions_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="RESTRICT"), index=True
    )
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT"), index=True
    )
    #: The bytes the answer was made on: the instance's ``file_sha256`` when it was claimed.
    file_sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[OrientationLabel] = mapped_column(_enum(OrientationLabel, "orientation_label"))
    confidence: Mapped[float] = mapped_column(Float)
    p_frontal: Mapped[float] = mapped_column(Float)
    p_lateral: Mapped[float] = mapped_column(Float)
    #: NULL when the header has no (or an unrecognised) ViewPosition.
    header_agrees: Mapped[bool | None] = mapped_column(Boolean)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Why it needs review: ``low_confidence``, ``unusual_image`` or both (comma-separated);
    #: NULL when it does not.
    review_reason: Mapped[str | None] = mapped_column(String(64))
    #: How the image is stored relative to standard display: ``numpy.rot90(upright, k)``
    #: with ``rotation = 90 k`` (0, 90, 180, 270) is the stored image, after a left-right
    #: mirror when ``mirrored``. ``mirrored`` is NULL for laterals; both are NULL for a
    #: model without an orientation head.
    rotation: Mapped[int | None] = mapped_column(SmallInteger)
    mirrored: Mapped[bool | None] = mapped_column(Boolean)
    #: Distance from the chest films the model was trained on (about 1 for a typical
    #: one); NULL for a model without the unusual-image head.
    unusual_score: Mapped[float | None] = mapped_column(Float)
    #: A frontal's projection, ``PA`` or ``AP``, from a model with a PA/AP head; NULL when
    #: its confidence max(p_ap, 1 - p_ap) is under the model's projection threshold (it
    #: abstains rather than guess), for laterals, and for models without the head.
    projection: Mapped[str | None] = mapped_column(String(2))
    #: The calibrated probability that a frontal was taken AP (NULL without the head).
    p_ap: Mapped[float | None] = mapped_column(Float)
    #: ``projection`` against the header's ViewPosition; NULL when either says nothing
    #: about PA or AP.
    projection_agrees: Mapped[bool | None] = mapped_column(Boolean)
    #: The chest-or-not head's probability that the image is no chest radiograph (its
    #: threshold is part of ``unusual_image``); NULL without the head.
    p_not_chest: Mapped[float | None] = mapped_column(Float)
    decode_ms: Mapped[float | None] = mapped_column(Float)
    inference_ms: Mapped[float | None] = mapped_column(Float)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReclassifyRun(Base):
    """One ``cxr-orient reclassify``: its filters, its target and how far it got.

    The walk goes through instances in id order; ``cursor_instance_id`` is the last id
    examined (sent or skipped), committed with the chunk it ends, so an interrupted run
    resumes after it without sending anything twice.
    """

    __tablename__ = "reclassify_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    actor: Mapped[str] = mapped_column(String(128))
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT"), index=True
    )
    #: Filters: NULL means not filtered.
    study_instance_uid: Mapped[str | None] = mapped_column(UID)
    since: Mapped[datetime | None] = mapped_column()
    include_failed: Mapped[bool] = mapped_column(Boolean, default=False)
    cursor_instance_id: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    #: NULL while the walk has not reached the last instance (resumable).
    finished_at: Mapped[datetime | None] = mapped_column()


class GroundTruthLabel(Base):
    """Append-only labels from radiologists or QA; the latest per instance counts."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="RESTRICT"), index=True
    )
    #: frontal, lateral, or not_chest (a reviewer's "not a chest radiograph").
    label: Mapped[LabelValue] = mapped_column(_enum(LabelValue, "orientation_label"))
    #: ``import`` (CSV), ``review`` (the review page; annotator is the user) or as given.
    source: Mapped[str] = mapped_column(String(64), default="import")
    annotator: Mapped[str | None] = mapped_column(String(128))
    #: For a frontal: ``PA`` or ``AP`` when the labeller said which (NULL otherwise).
    projection: Mapped[str | None] = mapped_column(String(2))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelEvent(Base):
    """Every registration, promotion decision, manual promotion and rollback."""

    __tablename__ = "model_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT"), index=True
    )
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UidConflict(Base):
    """A file whose SOPInstanceUID was already recorded, with other bytes (other sha256):
    a corrected re-send, or a UID clash. Append-only; what was done is in ``action``."""

    __tablename__ = "uid_conflicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="RESTRICT"), index=True
    )
    #: The StudyInstanceUID the new file names; ``study_matches`` is False when it is not
    #: the instance's (a clash across studies: the instance is never moved).
    study_instance_uid: Mapped[str] = mapped_column(UID)
    study_matches: Mapped[bool] = mapped_column(Boolean)
    #: The file the instance referred to when the new one came.
    known_file_path: Mapped[str] = mapped_column(Text)
    known_file_sha256: Mapped[str] = mapped_column(String(64))
    known_file_size: Mapped[int] = mapped_column(BigInteger)
    #: The instance's status then (``processing``: an answer in flight on the old bytes).
    known_status: Mapped[InstanceStatus] = mapped_column(_enum(InstanceStatus, "instance_status"))
    new_file_path: Mapped[str] = mapped_column(Text)
    new_file_sha256: Mapped[str] = mapped_column(String(64))
    new_file_size: Mapped[int] = mapped_column(BigInteger)
    #: ``CXR_UID_CONFLICT_POLICY`` in force (``keep_first``, ``replace``), and what was
    #: done under it.
    policy: Mapped[str] = mapped_column(String(16))
    action: Mapped[UidConflictAction] = mapped_column(
        _enum(UidConflictAction, "uid_conflict_action")
    )
    #: Why, in words (no paths: see docs/schema.md on PHI).
    detail: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: When the spool purge deleted the file of this conflict that no instance refers to
    #: (``new_file_path`` kept out under keep_first, ``known_file_path`` replaced);
    #: NULL while it is there (and for files outside the spool, never deleted).
    file_purged_at: Mapped[datetime | None] = mapped_column()


class StudyAnswer(Base):
    """The study-level answer, append-only: a new row each time a study's instances are
    all finished with a set of answers unlike its newest row's (a late instance, a new
    model's answers); the newest row (highest ``sequence``) is the current answer (view
    ``current_study_answers``)."""

    __tablename__ = "study_answers"
    __table_args__ = (UniqueConstraint("study_id", "sequence"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="RESTRICT"), index=True)
    #: 1 for a study's first answer, then 2, 3... (the unique pair keeps concurrent
    #: writers from adding the same answer twice).
    sequence: Mapped[int] = mapped_column(Integer)
    #: sha256 of the study's (instance id, status, current prediction id) list: a row is
    #: added only when it differs from the newest row's.
    fingerprint: Mapped[str] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(Integer)
    frontal_count: Mapped[int] = mapped_column(Integer)
    lateral_count: Mapped[int] = mapped_column(Integer)
    needs_review_count: Mapped[int] = mapped_column(Integer)
    failed_count: Mapped[int] = mapped_column(Integer)
    out_of_scope_count: Mapped[int] = mapped_column(Integer)
    #: Answers whose instance's ViewPosition claims the same view / another view.
    header_agrees_count: Mapped[int] = mapped_column(Integer)
    header_disagrees_count: Mapped[int] = mapped_column(Integer)
    no_frontal: Mapped[bool] = mapped_column(Boolean)
    no_lateral: Mapped[bool] = mapped_column(Boolean)
    header_disagreement: Mapped[bool] = mapped_column(Boolean)
    #: The flags set, comma-separated (``no_lateral,header_disagreement``); NULL: none.
    flags: Mapped[str | None] = mapped_column(String(128))
    #: The model versions behind the answers counted, comma-separated names.
    model_versions: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token for machines (STOW-RS senders): only its SHA-256 is stored.

    Tokens are 32 random bytes, so a fast hash is enough (nothing to brute-force) and
    lets a request find its row by an index; see docs/security.md."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    #: Hex SHA-256 of the token as sent (never the token).
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    #: What it may do, comma-separated (``stow``).
    scopes: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    #: Set by ``cxr-orient token revoke``; a revoked token is refused (401).
    revoked_at: Mapped[datetime | None] = mapped_column()


class WorkerHeartbeat(Base):
    """A running worker's word on whether it can classify now, renewed every few seconds
    by its main process (``/readyz`` counts the fresh ones); removed on a clean stop."""

    __tablename__ = "worker_heartbeats"

    #: The celery node name (``-n``, e.g. ``celery@host``).
    node: Mapped[str] = mapped_column(String(255), primary_key=True)
    pool_processes: Mapped[int] = mapped_column(Integer)
    #: Pool processes that have loaded the model (each can classify now).
    ready_processes: Mapped[int] = mapped_column(Integer)
    #: When every pool process first had its model (None before).
    ready_at: Mapped[datetime | None] = mapped_column()
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class UserRole(enum.StrEnum):
    """What a person may do on the review page (docs/security.md, "Users")."""

    #: The review queue: look, and record a label.
    reviewer = "reviewer"
    #: The audit views (read-only): answers per version, rates, a study's history.
    auditor = "auditor"
    #: Everything, and the users.
    admin = "admin"


class User(Base):
    """A person who logs in to the review page (``cxr-orient user create``)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    #: argon2id (PHC string, argon2-cffi); NULL: no password (single sign-on only, via
    #: CXR_TRUSTED_USER_HEADER).
    password_hash: Mapped[str | None] = mapped_column(Text)
    role: Mapped[UserRole] = mapped_column(_enum(UserRole, "user_role"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Bumped on a password change or a disable: session cookies signed before it (they
    #: carry the value) no longer log anybody in.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    last_login_at: Mapped[datetime | None] = mapped_column()
    #: Set by ``cxr-orient user disable``; a disabled user cannot log in (the row stays:
    #: labels name the user).
    disabled_at: Mapped[datetime | None] = mapped_column()


class LoginFailure(Base):
    """A failed login, kept for the rate limit (CXR_LOGIN_MAX_FAILURES per username and
    address within CXR_LOGIN_WINDOW_S); rows older than the window are deleted."""

    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_username_address", "username", "address", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: As typed (lower-cased, cut to 64): an unknown name is limited like a known one.
    username: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AcceptancePlan(Base):
    """A stratified sample of a site's answered films drawn for acceptance
    (``cxr-orient acceptance plan``); ``design`` records how (seed, targets, strata sizes)."""

    __tablename__ = "acceptance_plans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    actor: Mapped[str] = mapped_column(String(128))
    seed: Mapped[int] = mapped_column(BigInteger)
    #: Answered films the sample was drawn from.
    population: Mapped[int] = mapped_column(Integer)
    design: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AcceptanceItem(Base):
    """One sampled film of a plan: the answer it measures, and once a reviewer has
    labelled it in the plan's queue, that ``labels`` row (plus PA/AP for a frontal)."""

    __tablename__ = "acceptance_items"
    __table_args__ = (UniqueConstraint("plan_id", "instance_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("acceptance_plans.id", ondelete="RESTRICT"))
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="RESTRICT"))
    #: The answer sampled (the instance's current one when the plan was drawn).
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="RESTRICT"))
    #: Drawn in the simple random core sample (per-class figures), not only as a top-up
    #: of a stratum.
    core: Mapped[bool] = mapped_column(Boolean)
    #: Every stratum the film belongs to (``["class:lateral", "modality:CR", ...]``).
    strata: Mapped[list[str]] = mapped_column(JSON)
    #: The newest label recorded through the plan's queue; NULL: not labelled yet.
    label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id", ondelete="RESTRICT"))
    #: The reviewer's PA or AP for a frontal (NULL: not said, or not a frontal).
    projection: Mapped[str | None] = mapped_column(String(8))
    labelled_at: Mapped[datetime | None] = mapped_column()
