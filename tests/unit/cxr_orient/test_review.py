"""The review page's library: the queue query (SQLite and PostgreSQL), a decision as a
labels row, and that the next retrain's data query learns from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_orient import LABELS
from cxr_orient.review import (
    REVIEW_SOURCE,
    ReviewError,
    next_for_review,
    record_review,
    render_instance,
)
from cxr_orient.settings import get_settings
from db import crud
from db.models import LabelValue, OrientationLabel
from db.session import session_scope
from tests.utils.review import active_version, answered_instance


@pytest.fixture
def answers(migrated_db: str, tmp_path: Path) -> dict[str, int]:
    with session_scope() as session:
        version = active_version(session)
        made = {
            "low": answered_instance(session, root=tmp_path, version=version, index=1),
            "sure": answered_instance(
                session,
                root=tmp_path,
                version=version,
                index=2,
                confidence=0.99,
                needs_review=False,
            ),
            "disagree": answered_instance(
                session,
                root=tmp_path,
                version=version,
                index=3,
                header_agrees=False,
                needs_review=False,
                confidence=0.97,
            ),
            "unusual": answered_instance(
                session,
                root=tmp_path,
                version=version,
                index=4,
                review_reason="low_confidence,unusual_image",
            ),
        }
    return made


def _queue(kind: str = "flagged", after: int = 0) -> list[int]:
    with session_scope() as session:
        return [i.instance_id for i in crud.review_queue(session, kind=kind, after=after)]


def test_the_queue_oldest_first_by_filter(answers: dict[str, int]) -> None:
    assert _queue() == [answers["low"], answers["unusual"]]
    assert _queue(after=answers["low"]) == [answers["unusual"]]
    # A confident answer whose header names the other view is worth a look too.
    assert _queue("disagree") == [answers["disagree"]]
    assert _queue("out_of_scope") == [answers["unusual"]]
    assert _queue("uid_conflict") == []
    with pytest.raises(ValueError, match="unknown review filter"):
        _queue("everything")


def test_the_uid_conflict_filter(answers: dict[str, int]) -> None:
    from db.models import InstanceStatus, UidConflictAction

    with session_scope() as session:
        crud.add_uid_conflict(
            session,
            instance_id=answers["sure"],
            known_status=InstanceStatus.done,
            study_instance_uid="1.2.3",
            study_matches=True,
            known_file_path="/a",
            known_file_sha256="a" * 64,
            known_file_size=1,
            new_file_path="/b",
            new_file_sha256="b" * 64,
            new_file_size=1,
            policy="keep_first",
            action=UidConflictAction.kept_first,
            detail="test",
        )
    assert _queue("uid_conflict") == [answers["sure"]]


def test_a_newer_model_answer_replaces_the_flagged_one(
    answers: dict[str, int], tmp_path: Path
) -> None:
    """The queue shows current answers only: once a newly promoted version answers the
    instance confidently, it no longer awaits review."""
    from tests.utils.factories import prediction_record, register_version

    with session_scope() as session:
        second = register_version(session, "m2")
        crud.activate_model_version(session, version=second, actor="t", reason="t")
        crud.mark_queued(session, instance_ids=[answers["low"]], lease_s=0)
        crud.record_predictions(
            session,
            model_version_id=second.id,
            worker="t",
            records=[
                prediction_record(
                    instance_id=answers["low"],
                    label=OrientationLabel.frontal,
                    confidence=0.99,
                    p_frontal=0.99,
                    p_lateral=0.01,
                    header_agrees=True,
                    needs_review=False,
                    decode_ms=None,
                    inference_ms=None,
                    batch_size=None,
                )
            ],
        )
    assert _queue() == [answers["unusual"]]


def test_a_decision_leaves_the_queue_and_feeds_the_next_retrain(answers: dict[str, int]) -> None:
    from training.lifecycle import labelled_images_from_db

    with session_scope() as session:
        seen = crud.highest_trained_label_id(session)
        crud.add_label(
            session,
            instance_id=answers["low"],
            label=OrientationLabel.frontal,
            source="import",
            annotator=None,
        )
    with session_scope() as session:
        row = record_review(
            session, instance_id=answers["low"], decision="lateral", annotator="rita"
        )
        assert (row.source, row.annotator) == (REVIEW_SOURCE, "rita")
        record_review(
            session, instance_id=answers["unusual"], decision="not_chest", annotator="rita"
        )
        with pytest.raises(ReviewError, match="decision"):
            record_review(session, instance_id=answers["sure"], decision="pa", annotator="rita")
        with pytest.raises(ReviewError, match="no instance"):
            record_review(session, instance_id=10_000, decision="frontal", annotator="rita")
    assert _queue() == []
    with session_scope() as session:
        # The retrain's trigger counts them as new, and its data query takes the latest
        # label of each instance: the reviewer's lateral beats the earlier import.
        assert crud.count_labels_after(session, label_id=seen) == 3
        labelled = labelled_images_from_db(session, get_settings().intake)
    assert labelled.labels == [LABELS.index("lateral")]
    assert len(labelled.images) == 1 and labelled.images[0].shape == (256, 256)
    assert labelled.not_chest == 1 and labelled.problems == []
    # The not-chest film is decoded for the chest-or-not head, never as a view.
    assert len(labelled.not_chest_images) == 1 and labelled.not_chest_images[0].shape == (256, 256)
    assert len(labelled.not_chest_patients) == len(labelled.not_chest_files) == 1
    assert labelled.not_chest_files[0] not in labelled.files


def test_a_frontal_decision_may_carry_its_projection(answers: dict[str, int]) -> None:
    from training.lifecycle import labelled_images_from_db

    with session_scope() as session:
        row = record_review(
            session,
            instance_id=answers["low"],
            decision="frontal",
            annotator="rita",
            projection="AP",
        )
        assert (row.label, row.projection) == (LabelValue.frontal, "AP")
        with pytest.raises(ReviewError, match="only a frontal"):
            record_review(
                session,
                instance_id=answers["sure"],
                decision="lateral",
                annotator="rita",
                projection="PA",
            )
        with pytest.raises(ReviewError, match="projection 'LL'"):
            record_review(
                session,
                instance_id=answers["sure"],
                decision="frontal",
                annotator="rita",
                projection="LL",
            )
    with session_scope() as session:
        assert [
            (g.label, g.projection) for g in crud.labels_of(session, instance_id=answers["low"])
        ] == [(LabelValue.frontal, "AP")]
        assert crud.labels_of(session, instance_id=answers["sure"]) == []
        # What the retrain refits the PA/AP head on: the film with its projection.
        labelled = labelled_images_from_db(session, get_settings().intake)
    assert (labelled.labels, labelled.projections) == ([LABELS.index("frontal")], ["AP"])


def test_next_for_review_wraps_and_ends(answers: dict[str, int]) -> None:
    with session_scope() as session:
        assert next_for_review(session, kind="flagged", after=answers["low"]) == answers["unusual"]
        assert next_for_review(session, kind="flagged", after=answers["unusual"]) == answers["low"]
        record_review(session, instance_id=answers["low"], decision="frontal", annotator="r")
        record_review(session, instance_id=answers["unusual"], decision="frontal", annotator="r")
        assert next_for_review(session, kind="flagged", after=answers["unusual"]) is None


def test_render_is_the_model_input_or_a_placeholder(answers: dict[str, int]) -> None:
    from cxr_orient.intake import load_checked_image

    settings = get_settings()
    with session_scope() as session:
        instance = crud.get_instance(session, instance_id=answers["low"])
        assert instance is not None
        rendered = render_instance(instance, kind="model", settings=settings)
        assert rendered.unavailable is None
        from io import BytesIO

        import numpy as np
        from PIL import Image

        shown = np.asarray(Image.open(BytesIO(rendered.png)))
        model_input = load_checked_image(
            instance.file_path,
            intake=settings.intake,
            size=256,
            expected_sha256=instance.file_sha256,
        )
        assert np.array_equal(shown, model_input)
        Path(instance.file_path).write_bytes(b"changed")
        assert render_instance(instance, kind="large", settings=settings).unavailable == (
            "file changed since it\nwas recorded"
        )


def test_label_values() -> None:
    assert [v.value for v in LabelValue] == ["frontal", "lateral", "not_chest"]
