"""The decisions of one batch, with no I/O: which claimed rows to work on, which answers
to record and which failures, and what the batch did once the write said which rows it
still held.

:mod:`worker.pipeline` is the shell around these: it claims, decodes, predicts and
writes (each one call) and counts; everything it decides between those calls is here,
plain functions over plain values, tested without a database, a broker or a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from cxr_orient.answer import Answer
from cxr_orient.dicomnet.corrections.rules import AnswerFacts, rule_correction
from cxr_orient.dicomnet.retention import purged_error
from cxr_orient.errors import CxrError, InterruptedProcessingError, UnusualImageError
from cxr_orient.imaging import view_to_label, view_to_projection
from db.crud import ClaimedInstance, CorrectionRecord, PredictionRecord
from worker.decoding import DecodeResult

__all__ = [
    "BatchOutcome",
    "CorrectionRules",
    "Decided",
    "Failure",
    "Refusal",
    "Written",
    "by_version",
    "decide",
    "refused_at_claim",
    "rule_corrections",
    "settle",
]


@dataclass
class BatchOutcome:
    done: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    model_version: str | None = None
    #: Claimed, then the claim lapsed before the outcome was written (this worker was cut
    #: off from the database for longer than CXR_LEASE_S): nothing recorded, the work was
    #: re-queued and another claim answers it.
    lost: list[int] = field(default_factory=list)

    def merge(self, other: BatchOutcome) -> None:
        self.done.extend(other.done)
        self.failed.update(other.failed)
        self.skipped.extend(other.skipped)
        self.lost.extend(other.lost)
        self.model_version = self.model_version or other.model_version


@dataclass(frozen=True)
class Failure:
    """One claimed instance that fails alone, with its reason."""

    instance_id: int
    #: The bytes it was claimed with (a failure on a file replaced since is not recorded).
    file_sha256: str
    error: CxrError


@dataclass(frozen=True)
class Refusal:
    """The policy on answers the model makes but the hospital does not want recorded:
    ``CXR_UNUSUAL_IMAGE_ACTION=refuse`` fails an image the unusual-image score flags."""

    refuse_unusual: bool
    #: The model card's threshold, named in the error (None: the model has no
    #: unusual-image head, and flags nothing).
    unusual_threshold: float | None


@dataclass(frozen=True)
class CorrectionRules:
    """CXR_CORRECTION_RULES as one batch applies them: the faults enabled (empty while
    CXR_CORRECTION_DESTINATIONS is: rules decide nothing while corrections go nowhere),
    the model that answered (named in the correction) and the time decided."""

    enabled: frozenset[str]
    model_name: str
    decided_at: datetime


@dataclass(frozen=True)
class Decided:
    """What a batch's decode and predictions come to: answers to record, failures, and
    the corrections the rules decide on those answers (by instance id; recorded with
    them, in the same transaction)."""

    records: list[PredictionRecord]
    failures: list[Failure]
    corrections: dict[int, CorrectionRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class Written:
    """What the write found and did: the rows still held under the batch's claim (the
    only ones it recorded), those whose file was replaced since the claim, and how many
    answers it inserted."""

    held: frozenset[int]
    superseded: tuple[int, ...]
    recorded: int


def refused_at_claim(
    claimed: Sequence[ClaimedInstance], *, max_attempts: int
) -> tuple[list[ClaimedInstance], list[Failure]]:
    """The claimed rows to work on, and those that fail at once: interrupted more than
    ``max_attempts`` times (CXR_MAX_ATTEMPTS; a poison file must not kill workers for
    ever), or whose received file the spool purge deleted."""
    work: list[ClaimedInstance] = []
    failures: list[Failure] = []
    for row in claimed:
        error: CxrError | None = None
        if row.attempts > max_attempts:
            error = InterruptedProcessingError(
                f"processing was interrupted {row.attempts - 1} times "
                f"(CXR_MAX_ATTEMPTS={max_attempts}); giving up"
            )
        else:
            error = purged_error(row.instance_id, row.file_purged_at)
        if error is None:
            work.append(row)
        else:
            failures.append(Failure(row.instance_id, row.file_sha256, error))
    return work, failures


def by_version(
    work: Sequence[ClaimedInstance], active_version_id: int
) -> dict[int, list[ClaimedInstance]]:
    """The work grouped by the model version that must answer it: reclassify work names
    its version (the row's marker, so a re-sent id keeps it); the rest, and work naming
    the active version, is one group for the active model."""
    groups: dict[int, list[ClaimedInstance]] = {}
    for w in work:
        groups.setdefault(w.target_version_id or active_version_id, []).append(w)
    return groups


def decide(
    work: Sequence[ClaimedInstance],
    decoded: Sequence[DecodeResult],
    predictions: Sequence[Answer],
    *,
    refusal: Refusal,
    inference_ms: float,
    rules: CorrectionRules | None = None,
) -> Decided:
    """The records and failures of a batch: ``decoded`` holds each work item's decode
    (in the order of ``work``), ``predictions`` the model's answers on the images that
    decoded, in the same order. A decode error fails its image alone; an answer the
    refusal policy refuses fails it; the rest are recorded with whether the header's
    ViewPosition agrees (None when the header names no view), whether it names the
    projection the model states (None when either names none; a lateral's p_ap is
    dropped: it has no projection to be probable of) and their timings; with ``rules``,
    the corrections they decide on the recorded answers."""
    ready = [(w, ms) for w, (img, _, ms) in zip(work, decoded, strict=True) if img is not None]
    failures = [
        Failure(w.instance_id, w.file_sha256, err)
        for w, (_, err, _) in zip(work, decoded, strict=True)
        if err is not None
    ]
    records: list[PredictionRecord] = []
    for (w, decode_ms), answer in zip(ready, predictions, strict=True):
        if answer.unusual and refusal.refuse_unusual:
            failures.append(
                Failure(
                    w.instance_id,
                    w.file_sha256,
                    UnusualImageError(
                        f"{w.file_path!r}: unlike any chest radiograph the model was trained on "
                        f"(unusual-image score {answer.unusual_score:.3f} > "
                        f"{refusal.unusual_threshold or 0.0:.3f}); CXR_UNUSUAL_IMAGE_ACTION=refuse"
                    ),
                )
            )
            continue
        claimed = view_to_label(w.header_view)
        header_projection = view_to_projection(w.header_view)
        records.append(
            PredictionRecord(
                instance_id=w.instance_id,
                answer=replace(
                    answer,
                    header_agrees=None if claimed is None else claimed == answer.label,
                    p_ap=answer.p_ap if answer.label == "frontal" else None,
                    projection_agrees=(
                        None
                        if answer.projection is None or header_projection is None
                        else answer.projection == header_projection
                    ),
                ),
                file_sha256=w.file_sha256,
                decode_ms=round(decode_ms, 3),
                inference_ms=round(inference_ms, 3),
                batch_size=len(ready),
            )
        )
    corrections = rule_corrections(work, records, rules) if rules is not None else {}
    return Decided(records, failures, corrections)


def rule_corrections(
    work: Iterable[ClaimedInstance], records: Iterable[PredictionRecord], rules: CorrectionRules
) -> dict[int, CorrectionRecord]:
    """The corrections CXR_CORRECTION_RULES decides on a batch's answers, by instance id
    (:func:`cxr_orient.dicomnet.corrections.rules.rule_correction`; the prediction id and
    the bytes are filled in when recorded). The answer's own projection (PA / AP) states
    a frontal's view."""
    if not rules.enabled:
        return {}
    by_id = {w.instance_id: w for w in work}
    decided: dict[int, CorrectionRecord] = {}
    for record in records:
        w, answer = by_id[record.instance_id], record.answer
        correction = rule_correction(
            AnswerFacts(
                answer.label,
                answer.rotation,
                answer.mirrored,
                w.header_view,
                answer.needs_review,
                answer.projection,
            ),
            enabled=rules.enabled,
            instance_id=w.instance_id,
            original_sop_instance_uid=w.sop_instance_uid,
            model_name=rules.model_name,
            decided_at=rules.decided_at,
        )
        if correction is not None:
            decided[w.instance_id] = correction
    return decided


def settle(work: Iterable[ClaimedInstance], decided: Decided, written: Written) -> BatchOutcome:
    """What the batch did, once written: an instance whose file was replaced since the
    claim is skipped (its replacement is queued), one no longer held under the claim is
    lost (another claim answers it), the others are done or failed as decided."""
    superseded = set(written.superseded)
    ids = [w.instance_id for w in work]
    lost = [i for i in ids if i not in written.held and i not in superseded]
    gone = superseded | set(lost)
    return BatchOutcome(
        done=[r.instance_id for r in decided.records if r.instance_id not in gone],
        failed={f.instance_id: f.error.code for f in decided.failures if f.instance_id not in gone},
        skipped=list(written.superseded),
        lost=lost,
    )
