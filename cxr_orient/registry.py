"""The model registry: checkpoints recorded in ``model_versions`` and the one in service.

Only a checkpoint registered here is ever loaded by a worker, and only after
its SHA-256 matches the registered value (``cxr_orient.modelstore``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cxr_orient.errors import ModelError
from cxr_orient.settings import get_settings
from db import crud
from db.models import ModelVersion
from db.session import session_scope

if TYPE_CHECKING:
    from cxr_orient.modelstore import Classifier

logger = logging.getLogger(__name__)


def register_checkpoint(
    session: Session, path: Path, *, actor: str, reason: str, name: str | None = None
) -> ModelVersion:
    """Record a checkpoint (with its card) as a candidate model version."""
    from cxr_orient.modelstore import file_sha256, read_card

    path = path.expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    card = read_card(path)
    sha256 = file_sha256(path)
    if card.sha256 and card.sha256 != sha256:
        raise ModelError(f"checkpoint {path} does not match the sha256 in its card")
    version_name = name or card.name
    existing = crud.find_model_version(session, name=version_name)
    if existing is not None:
        if existing.sha256 != sha256:
            raise ModelError(
                f"model version {version_name!r} is already registered with another file"
            )
        return existing
    return crud.register_model_version(
        session,
        name=version_name,
        architecture=card.architecture,
        file_path=str(path),
        sha256=sha256,
        input_size=card.input_size,
        labels=card.labels,
        temperature=card.temperature,
        review_threshold=card.review_threshold,
        metrics=card.metrics,
        training=card.training,
        actor=actor,
        reason=reason,
    )


def ensure_active_model(session: Session) -> ModelVersion:
    """The active model version; with none, the bootstrap checkpoint
    (``CXR_MODEL_PATH`` or the shipped one) is registered and activated."""
    active = crud.active_model_version(session)
    if active is not None:
        return active
    path = get_settings().bootstrap_model_path
    try:
        with session.begin_nested():
            version = register_checkpoint(
                session, path, actor="system", reason="bootstrap: no active model"
            )
            crud.activate_model_version(
                session,
                version=version,
                actor="system",
                reason="bootstrap: no active model",
                action="bootstrap",
            )
    except IntegrityError:  # another process bootstrapped at the same moment
        active = crud.active_model_version(session)
        if active is None:
            raise
        return active
    logger.info("activated bootstrap model %s from %s", version.name, path)
    return version


@dataclass(frozen=True)
class LoadedModel:
    """The model in service in this process, as the database describes it."""

    version_id: int
    name: str
    input_size: int
    review_threshold: float
    classifier: Classifier
    sha256: str

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.version_id, self.name, self.sha256)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated (N, 2) probabilities [p_frontal, p_lateral]."""
        return self.classifier.predict_proba(batch)


_LOCK = threading.Lock()
_LOADED: LoadedModel | None = None


def load_version(version: ModelVersion) -> LoadedModel:
    """Load a registered version's checkpoint, refusing it if its bytes changed."""
    from cxr_orient.modelstore import (
        Classifier,
        load_checkpoint,
        read_card,
        with_mixed_bfloat16,
    )

    path = Path(version.file_path)
    model = load_checkpoint(path, expected_sha256=version.sha256)
    card = dataclasses.replace(
        read_card(path), temperature=version.temperature, review_threshold=version.review_threshold
    )
    if get_settings().mixed_precision == "bfloat16":
        model = with_mixed_bfloat16(model, card)
    threshold = get_settings().review_threshold or version.review_threshold
    return LoadedModel(
        version_id=version.id,
        name=version.name,
        input_size=version.input_size,
        review_threshold=threshold,
        classifier=Classifier(model, card),
        sha256=version.sha256,
    )


def current_model() -> LoadedModel:
    """The active model, loaded once per process and swapped when the active version
    changes in the database (checked at every call, i.e. between batches)."""
    global _LOADED
    with session_scope() as session:
        version = ensure_active_model(session)
        # Identity is the row and the file's hash: an id alone is not unique across
        # databases (tests, a re-created database) and must never serve a stale model.
        key = (version.id, version.name, version.sha256)
        if _LOADED is not None and _LOADED.key == key:
            return _LOADED
        with _LOCK:
            if _LOADED is None or _LOADED.key != key:
                previous = _LOADED.name if _LOADED else None
                _LOADED = load_version(version)
                logger.info("model in service: %s (was %s)", _LOADED.name, previous)
            return _LOADED
