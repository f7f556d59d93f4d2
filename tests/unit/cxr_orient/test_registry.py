"""cxr_orient/registry.py: registering checkpoints, the bootstrap of an empty database,
promotion and rollback (with their model_events), loading for serving. SQLite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from cxr_orient.errors import ModelError
from cxr_orient.modelstore import Classifier, file_sha256, read_card
from cxr_orient.registry import (
    current_model,
    ensure_active_model,
    load_classifier,
    load_version,
    promote,
    register_checkpoint,
    rollback,
)
from cxr_orient.settings import SHIPPED_MODEL, get_settings
from db import crud
from db.models import ModelEvent, ModelVersion
from db.session import session_scope
from tests.utils.embedded import embedded_setup

SHIPPED_NAME = SHIPPED_MODEL.stem


@pytest.fixture(autouse=True)
def embedded(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded_setup(tmp_path, configure, monkeypatch)


def tiny_checkpoint(folder: Path, name: str = "tiny-v1", seed: int = 0) -> Path:
    """A 32x32 compact model, saved with its card (different weights for another seed)."""
    import keras

    from cxr_orient.architectures import build_model
    from cxr_orient.modelstore import ModelCard, save_checkpoint

    keras.utils.set_random_seed(seed)
    model = build_model("compact", input_size=32)
    return save_checkpoint(
        model,
        ModelCard(name=name, architecture="compact", input_size=32, review_threshold=0.8),
        folder,
    )


def _events() -> list[tuple[str, str, str, str]]:
    """(version name, action, actor, reason) of every model event, oldest first."""
    with session_scope() as session:
        rows = session.execute(
            select(ModelVersion.name, ModelEvent.action, ModelEvent.actor, ModelEvent.reason)
            .join(ModelVersion, ModelVersion.id == ModelEvent.model_version_id)
            .order_by(ModelEvent.id)
        )
        return [(n, a, who, why) for n, a, who, why in rows]


def _active() -> dict[str, bool]:
    with session_scope() as session:
        return {v.name: v.is_active for v in crud.list_model_versions(session)}


def test_register_the_shipped_checkpoint(tmp_path: Path) -> None:
    with session_scope() as session:
        version = register_checkpoint(session, SHIPPED_MODEL, actor="tester", reason="unit")
        first_id = version.id
        assert version.name == SHIPPED_NAME
        assert version.sha256 == file_sha256(SHIPPED_MODEL) == read_card(SHIPPED_MODEL).sha256
        assert version.file_path == str(SHIPPED_MODEL.resolve())
        assert (version.state, version.is_active) == ("candidate", False)
        assert version.input_size == 256 and version.architecture == "compact_invariant_64_heads3"
        again = register_checkpoint(session, SHIPPED_MODEL, actor="tester", reason="again")
        assert again.id == first_id, "the same file under the same name: the same row"
    assert _events() == [(SHIPPED_NAME, "register", "tester", "unit")]


def test_another_file_under_a_registered_name_is_refused(tmp_path: Path) -> None:
    first = tiny_checkpoint(tmp_path / "one", seed=0)
    second = tiny_checkpoint(tmp_path / "two", seed=1)
    assert file_sha256(first) != file_sha256(second)
    with session_scope() as session:
        register_checkpoint(session, first, actor="tester", reason="first")
    with (
        pytest.raises(ModelError, match="already registered with another file"),
        session_scope() as session,
    ):
        register_checkpoint(session, second, actor="tester", reason="second")
    with session_scope() as session:
        versions = crud.list_model_versions(session)
        assert [(v.name, v.file_path) for v in versions] == [("tiny-v1", str(first.resolve()))]


def test_missing_checkpoint_and_altered_file_are_refused(tmp_path: Path) -> None:
    path = tiny_checkpoint(tmp_path / "m")
    with pytest.raises(ModelError, match="does not exist"), session_scope() as session:
        register_checkpoint(session, tmp_path / "nothing.keras", actor="t", reason="r")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="does not match the sha256"), session_scope() as session:
        register_checkpoint(session, path, actor="t", reason="r")


def test_ensure_active_model_bootstraps_an_empty_database() -> None:
    assert _active() == {}
    with session_scope() as session:
        version = ensure_active_model(session, get_settings().inference)
        assert (version.name, version.is_active, version.state) == (SHIPPED_NAME, True, "active")
        version_id = version.id
    with session_scope() as session:
        assert ensure_active_model(session, get_settings().inference).id == version_id
    assert _active() == {SHIPPED_NAME: True}
    assert [(n, a, who) for n, a, who, _ in _events()] == [
        (SHIPPED_NAME, "register", "system"),
        (SHIPPED_NAME, "bootstrap", "system"),
    ]


def test_promote_and_rollback_swap_is_active_and_record_events(tmp_path: Path) -> None:
    with session_scope() as session:
        ensure_active_model(session, get_settings().inference)
        register_checkpoint(session, tiny_checkpoint(tmp_path), actor="tester", reason="new")

    promoted = promote("tiny-v1", actor="alice", reason="better on site data")
    assert promoted.name == "tiny-v1"
    assert _active() == {"tiny-v1": True, SHIPPED_NAME: False}
    with session_scope() as session:
        states = {v.name: v.state for v in crud.list_model_versions(session)}
    assert states == {"tiny-v1": "active", SHIPPED_NAME: "retired"}

    restored = rollback(actor="bob", reason="too many reviews")
    assert restored.name == SHIPPED_NAME
    assert _active() == {"tiny-v1": False, SHIPPED_NAME: True}
    assert _events()[-2:] == [
        ("tiny-v1", "promote", "alice", "better on site data"),
        (SHIPPED_NAME, "rollback", "bob", "too many reviews"),
    ]
    with session_scope() as session:
        last = session.scalars(select(ModelEvent).order_by(ModelEvent.id.desc())).first()
        assert last is not None
        assert last.details == {"previous": "tiny-v1", "rolled_back": "tiny-v1"}


def test_promote_refuses_unknown_and_active_versions() -> None:
    with session_scope() as session:
        ensure_active_model(session, get_settings().inference)
    with pytest.raises(ModelError, match="no model version named 'nope'"):
        promote("nope", actor="a", reason="r")
    with pytest.raises(ModelError, match="already active"):
        promote(SHIPPED_NAME, actor="a", reason="r")
    assert [a for _, a, _, _ in _events()] == ["register", "bootstrap"]


def test_rollback_without_a_previous_version_raises() -> None:
    with pytest.raises(ModelError, match="no previously active"):
        rollback(actor="a", reason="empty database")
    with session_scope() as session:
        ensure_active_model(session, get_settings().inference)
    with pytest.raises(ModelError, match="no previously active"):
        rollback(actor="a", reason="only the bootstrap model")
    assert _active() == {SHIPPED_NAME: True}
    assert "rollback" not in [a for _, a, _, _ in _events()]


def test_load_classifier_by_name_and_by_path(tmp_path: Path) -> None:
    tiny = tiny_checkpoint(tmp_path)
    with session_scope() as session:
        register_checkpoint(session, tiny, actor="tester", reason="r")

    by_name = load_classifier("tiny-v1", get_settings().inference)
    by_path = load_classifier(str(SHIPPED_MODEL), get_settings().inference)

    assert isinstance(by_name, Classifier) and isinstance(by_path, Classifier)
    assert (by_name.card.name, by_name.input_size) == ("tiny-v1", 32)
    assert (by_path.card.name, by_path.input_size) == (SHIPPED_NAME, 256)
    probs = by_name.predict_proba(np.zeros((2, 32, 32, 3), np.uint8))
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1.0)
    with pytest.raises(ModelError, match=r"neither a \.keras file nor a registered version"):
        load_classifier("not-registered", get_settings().inference)


def test_current_model_is_cached_until_the_active_version_changes(tmp_path: Path) -> None:
    first = current_model(get_settings().inference)  # bootstraps the empty database
    assert first.name == SHIPPED_NAME and first.input_size == 256
    assert current_model(get_settings().inference) is first
    with session_scope() as session:
        register_checkpoint(session, tiny_checkpoint(tmp_path), actor="tester", reason="r")
    assert current_model(get_settings().inference) is first, (
        "registering alone changes nothing in service"
    )

    promote("tiny-v1", actor="tester", reason="swap")
    swapped = current_model(get_settings().inference)
    assert swapped is not first
    assert (swapped.name, swapped.input_size, swapped.review_threshold) == ("tiny-v1", 32, 0.8)
    assert current_model(get_settings().inference) is swapped

    rollback(actor="tester", reason="back")
    back = current_model(get_settings().inference)
    assert back.name == SHIPPED_NAME and back is not first


def test_the_projection_threshold_in_force(configure: Callable[..., None]) -> None:
    """The card's PA/AP threshold unless CXR_PROJECTION_THRESHOLD raises it; a model
    without a PA/AP head keeps none."""
    from cxr_orient.modelstore import read_card

    with session_scope() as session:
        shipped = ensure_active_model(session, get_settings().inference)
        v3 = SHIPPED_MODEL.parent / "compact-invariant-64-v3.keras"
        older = register_checkpoint(session, v3, actor="tester", reason="r")
    assert (
        load_version(shipped, get_settings().inference).classifier.card.projection_threshold
        == read_card(SHIPPED_MODEL).projection_threshold
        == 0.81
    )
    configure(projection_threshold=0.95)
    inference = get_settings().inference
    assert load_version(shipped, inference).classifier.card.projection_threshold == 0.95
    assert load_version(older, inference).classifier.card.projection_threshold is None
