"""worker/outcomes.py: a batch's decisions as plain functions, no server, no model."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from cxr_orient.answer import Answer
from cxr_orient.errors import DecodeError, TruncatedFileError
from db.crud import ClaimedInstance
from worker.outcomes import (
    CorrectionRules,
    Decided,
    Failure,
    Refusal,
    Written,
    by_version,
    decide,
    refused_at_claim,
    settle,
)

IMAGE = np.zeros((4, 4, 3), dtype=np.uint8)
KEEP = Refusal(refuse_unusual=False, unusual_threshold=0.5)
REFUSE = Refusal(refuse_unusual=True, unusual_threshold=0.5)


def _claimed(
    instance_id: int,
    *,
    view: str | None = "PA",
    attempts: int = 1,
    purged_at: datetime | None = None,
    version: int | None = None,
) -> ClaimedInstance:
    return ClaimedInstance(
        instance_id=instance_id,
        file_path=f"/spool/{instance_id}.dcm",
        file_sha256=f"{instance_id:064x}",
        header_view=view,
        attempts=attempts,
        file_purged_at=purged_at,
        target_version_id=version,
    )


def _answer(
    label: str = "frontal", *, unusual: bool = False, reasons: tuple[str, ...] = ()
) -> Answer:
    p_frontal = 0.95 if label == "frontal" else 0.05
    if unusual:
        reasons = (*reasons, "unusual_image")
    return Answer(
        label=label,
        confidence=0.95,
        p_frontal=p_frontal,
        p_lateral=1 - p_frontal,
        needs_review=bool(reasons),
        rotation=0,
        mirrored=False,
        unusual_score=0.9 if unusual else 0.1,
        review_reasons=reasons,
    )


def test_a_claimed_row_past_its_attempts_or_purged_fails_at_once_the_rest_is_work() -> None:
    rows = [
        _claimed(1),
        _claimed(2, attempts=4),
        _claimed(3, purged_at=datetime(2026, 1, 2)),
        _claimed(4, attempts=3),
    ]
    work, failures = refused_at_claim(rows, max_attempts=3)
    assert [w.instance_id for w in work] == [1, 4]
    assert [(f.instance_id, f.error.code) for f in failures] == [
        (2, "too_many_attempts"),
        (3, "file_purged"),
    ]
    assert "interrupted 3 times (CXR_MAX_ATTEMPTS=3)" in str(failures[0].error)
    assert "spool purge" in str(failures[1].error)  # the retention module's one wording
    assert failures[1].file_sha256 == rows[2].file_sha256


def test_work_is_grouped_by_the_version_its_marker_names() -> None:
    rows = [_claimed(1), _claimed(2, version=7), _claimed(3, version=5), _claimed(4, version=7)]
    groups = by_version(rows, active_version_id=5)
    assert {v: [w.instance_id for w in ws] for v, ws in groups.items()} == {5: [1, 3], 7: [2, 4]}


def test_each_bad_image_fails_alone_and_the_others_are_recorded_with_the_header() -> None:
    work = [_claimed(1, view="PA"), _claimed(2), _claimed(3, view="LL"), _claimed(4, view=None)]
    bad = TruncatedFileError("cut short")
    decoded = [(IMAGE, None, 2.00049), (None, bad, 1.0), (IMAGE, None, 3.0), (IMAGE, None, 4.0)]
    predictions = [
        _answer("frontal"),
        _answer("frontal", reasons=("low_confidence",)),
        _answer("lateral", reasons=("low_confidence",), unusual=True),
    ]

    decided = decide(work, decoded, predictions, refusal=KEEP, inference_ms=10.12345)

    assert decided.failures == [Failure(2, work[1].file_sha256, bad)]
    records = {r.instance_id: r for r in decided.records}
    assert sorted(records) == [1, 3, 4]
    assert records[1].answer.header_agrees is True
    assert records[3].answer.header_agrees is False  # the header says lateral, the model frontal
    assert records[4].answer.header_agrees is None  # no ViewPosition: nothing to agree with
    assert records[4].answer.review_reason == "low_confidence,unusual_image"
    assert records[4].answer.unusual and not records[1].answer.unusual
    assert records[1].answer.review_reason is None
    assert records[1].answer == replace(predictions[0], header_agrees=True)
    assert records[1].decode_ms == 2.0 and records[1].inference_ms == 10.123
    assert {r.batch_size for r in decided.records} == {3}  # the images that decoded
    assert {r.file_sha256 for r in decided.records} == {w.file_sha256 for w in work} - {
        work[1].file_sha256
    }


def test_the_projection_is_held_against_the_header_and_a_laterals_p_ap_dropped() -> None:
    """A model with a PA/AP head: projection_agrees where both the model and the header
    name a projection (None where either names none); a lateral keeps no p_ap."""
    work = [
        _claimed(1, view="PA"),
        _claimed(2, view="AP SUPINE"),
        _claimed(3, view="PA"),
        _claimed(4, view="FRONTAL"),
        _claimed(5, view="LL"),
    ]
    decoded = [(IMAGE, None, 1.0)] * len(work)
    predictions = [
        replace(_answer("frontal"), p_ap=0.1, projection="PA"),
        replace(_answer("frontal"), p_ap=0.1, projection="PA"),
        replace(_answer("frontal"), p_ap=0.6, projection=None),  # abstained
        replace(_answer("frontal"), p_ap=0.9, projection="AP"),
        replace(_answer("lateral"), p_ap=0.7, projection=None),
    ]

    decided = decide(work, decoded, predictions, refusal=KEEP, inference_ms=1.0)

    answers = {r.instance_id: r.answer for r in decided.records}
    assert [answers[i].projection_agrees for i in range(1, 6)] == [True, False, None, None, None]
    assert [answers[i].p_ap for i in range(1, 6)] == [0.1, 0.1, 0.6, 0.9, None]


def test_an_unusual_image_is_refused_only_under_the_refuse_policy() -> None:
    work = [_claimed(1), _claimed(2)]
    decoded = [(IMAGE, None, 1.0), (IMAGE, None, 1.0)]
    predictions = [_answer(), _answer(unusual=True)]

    kept = decide(work, decoded, predictions, refusal=KEEP, inference_ms=1.0)
    assert [r.instance_id for r in kept.records] == [1, 2] and kept.failures == []

    refused = decide(work, decoded, predictions, refusal=REFUSE, inference_ms=1.0)
    assert [r.instance_id for r in refused.records] == [1]
    [failure] = refused.failures
    assert failure.instance_id == 2 and failure.error.code == "unusual_image"
    assert "score 0.900 > 0.500" in str(failure.error)


def test_settled_outcome_counts_only_rows_still_held_and_unreplaced() -> None:
    work = [_claimed(i) for i in range(1, 6)]
    decided = decide(
        work,
        [(IMAGE, None, 1.0)] * 3 + [(None, DecodeError("x"), 1.0)] * 2,
        [_answer()] * 3,
        refusal=KEEP,
        inference_ms=1.0,
    )
    # 1, 4 still held; 2 and 5 lapsed to another claim; 3's file was replaced meanwhile.
    outcome = settle(work, decided, Written(held=frozenset({1, 4}), superseded=(3,), recorded=1))
    assert outcome.done == [1]
    assert outcome.failed == {4: "decode_failed"}
    assert outcome.skipped == [3]
    assert outcome.lost == [2, 5]


def test_nothing_written_when_nothing_held() -> None:
    work = [_claimed(1)]
    decided = Decided(records=[], failures=[Failure(1, work[0].file_sha256, DecodeError("x"))])
    outcome = settle(work, decided, Written(held=frozenset(), superseded=(), recorded=0))
    assert (outcome.done, outcome.failed, outcome.skipped, outcome.lost) == ([], {}, [], [1])


def test_the_correction_rules_decide_on_the_recorded_answers_only() -> None:
    """CXR_CORRECTION_RULES: a lateral stored turned under a PA header is corrected when
    both faults are enabled and it needs no review; one needing review, one whose faults
    are not all enabled, one refused, and one without a SOP Instance UID are not."""
    uid = {1: "1.2.1", 2: "1.2.2", 3: "1.2.3", 4: None, 5: "1.2.5"}
    work = [replace(_claimed(i), sop_instance_uid=uid[i]) for i in uid]
    turned = replace(_answer("lateral"), rotation=90, mirrored=None)
    predictions = [
        turned,
        replace(turned, needs_review=True, review_reasons=("low_confidence",)),
        replace(_answer("frontal"), projection="AP"),
        turned,
        replace(turned, needs_review=True, review_reasons=("unusual_image",), unusual_score=0.9),
    ]
    decoded = [(IMAGE, None, 1.0)] * len(work)
    when = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    rules = CorrectionRules(
        enabled=frozenset({"turned", "header_view"}), model_name="m3", decided_at=when
    )

    decided = decide(work, decoded, predictions, refusal=REFUSE, inference_ms=1.0, rules=rules)
    assert [r.instance_id for r in decided.records] == [1, 2, 3, 4]
    assert list(decided.corrections) == [1]
    correction = decided.corrections[1]
    assert (correction.faults, correction.view, correction.rotation) == (
        "turned,header_view",
        "LL",
        90,
    )
    assert correction.original_sop_instance_uid == "1.2.1"
    assert correction.decided_via == "rule" and correction.decided_at == when
    assert decided.corrections[1].decided_by.startswith("model m3 (rule ")

    off = replace(rules, enabled=frozenset())
    assert (
        decide(work, decoded, predictions, refusal=REFUSE, inference_ms=1.0, rules=off).corrections
        == {}
    )
    assert decide(work, decoded, predictions, refusal=REFUSE, inference_ms=1.0).corrections == {}
