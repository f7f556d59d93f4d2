"""The model registry: checkpoints recorded in ``model_versions`` and the one in service.

It owns model versions: registering a checkpoint, the bootstrap of an empty database,
promotion and rollback (each recorded in ``model_events``), loading a version for
serving, and the model in service in this process. Queries live in :mod:`db.crud`; the
promotion *gate* (whether a retrained candidate is better) lives in
:mod:`training.gate`, and calls :func:`db.crud.activate_model_version` through
:mod:`training.lifecycle`.

Only a checkpoint registered here is ever loaded by a worker, and only after
its SHA-256 matches the registered value (``cxr_orient.modelstore``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cxr_orient.errors import ModelError
from cxr_orient.settings import InferenceSettings
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


def ensure_active_model(session: Session, inference: InferenceSettings) -> ModelVersion:
    """The active model version; with none, the bootstrap checkpoint
    (``CXR_MODEL_PATH`` or the shipped one) is registered and activated."""
    active = crud.active_model_version(session)
    if active is not None:
        return active
    path = inference.bootstrap_model_path
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


def promote(name: str, *, actor: str, reason: str) -> ModelVersion:
    """Make a registered version the active one (a human's decision, recorded)."""
    with session_scope() as session:
        version = crud.find_model_version(session, name=name)
        if version is None:
            raise ModelError(f"no model version named {name!r}")
        if version.is_active:
            raise ModelError(f"{name!r} is already active")
        crud.activate_model_version(
            session, version=version, actor=actor, reason=reason, action="promote"
        )
        return version


def rollback(*, actor: str, reason: str) -> ModelVersion:
    """Re-activate the version that was in service before the current one."""
    with session_scope() as session:
        active = crud.active_model_version(session)
        previous = crud.previously_active_model_version(session)
        if previous is None:
            raise ModelError("no previously active model version to roll back to")
        crud.activate_model_version(
            session,
            version=previous,
            actor=actor,
            reason=reason,
            action="rollback",
            details={"rolled_back": active.name if active else None},
        )
        return previous


@dataclass(frozen=True)
class LoadedModel:
    """The model in service in this process, as the database describes it.

    ``classifier.card`` carries the registered temperature and the review and projection
    thresholds in force (``CXR_REVIEW_THRESHOLD`` / ``CXR_PROJECTION_THRESHOLD`` when
    set, else the version's / the card's), so
    :meth:`~cxr_orient.modelstore.Classifier.predict` is the one prediction rule.
    """

    version_id: int
    name: str
    classifier: Classifier
    sha256: str

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.version_id, self.name, self.sha256)

    @property
    def input_size(self) -> int:
        return self.classifier.input_size

    @property
    def review_threshold(self) -> float:
        return self.classifier.card.review_threshold

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated (N, 2) probabilities [p_frontal, p_lateral]."""
        return self.classifier.predict_proba(batch)


_LOCK = threading.Lock()
_LOADED: LoadedModel | None = None


def load_version(version: ModelVersion, inference: InferenceSettings) -> LoadedModel:
    """Load a registered version's checkpoint, refusing it if its bytes changed."""
    from cxr_orient.modelstore import (
        Classifier,
        load_checkpoint,
        read_card,
        with_mixed_bfloat16,
    )

    path = Path(version.file_path)
    card = read_card(path)
    card = dataclasses.replace(
        card,
        temperature=version.temperature,
        review_threshold=inference.review_threshold or version.review_threshold,
        projection_threshold=(
            inference.projection_threshold
            if inference.projection_threshold is not None and card.projection_threshold is not None
            else card.projection_threshold
        ),
    )
    if inference.inference == "served":
        # The forward pass runs in the worker's inference process, which loads (and
        # checks) the checkpoint itself: this pool process holds no Keras model.
        from cxr_orient.serving import socket_for
        from cxr_orient.serving.client import ServedClassifier

        return LoadedModel(
            version_id=version.id,
            name=version.name,
            sha256=version.sha256,
            classifier=ServedClassifier(
                card,
                path=path,
                sha256=version.sha256,
                mixed_precision=inference.mixed_precision,
                socket_path=socket_for(os.getpid()),
            ),
        )
    model = load_checkpoint(path, expected_sha256=version.sha256)
    if inference.mixed_precision == "bfloat16":
        model = with_mixed_bfloat16(model, card)
    return LoadedModel(
        version_id=version.id,
        name=version.name,
        classifier=Classifier(model, card),
        sha256=version.sha256,
    )


def current_model(inference: InferenceSettings) -> LoadedModel:
    """The active model, loaded once per process and swapped when the active version
    changes in the database (checked at every call, i.e. between batches)."""
    global _LOADED
    with session_scope() as session:
        version = ensure_active_model(session, inference)
        # Identity is the row and the file's hash: an id alone is not unique across
        # databases (tests, a re-created database) and must never serve a stale model.
        key = (version.id, version.name, version.sha256)
        if _LOADED is not None and _LOADED.key == key:
            return _LOADED
        with _LOCK:
            if _LOADED is None or _LOADED.key != key:
                previous = _LOADED.name if _LOADED else None
                _LOADED = load_version(version, inference)
                logger.info("model in service: %s (was %s)", _LOADED.name, previous)
            return _LOADED


#: Versions other than the active one kept loaded per process (reclassify work for a
#: named version); the least recently used is dropped beyond this.
OTHER_VERSIONS_KEPT = 2
_OTHERS: OrderedDict[tuple[int, str, str], LoadedModel] = OrderedDict()


def model_for_version(version_id: int, inference: InferenceSettings) -> LoadedModel:
    """A registered version by id, for work that names its model (``cxr-orient reclassify
    --model``): the active model when it is that version, else loaded once per process and
    kept in a small cache (:data:`OTHER_VERSIONS_KEPT`). Raises :class:`ModelError` when
    the version is unknown or its checkpoint cannot be loaded (missing, altered)."""
    with session_scope() as session:
        version = crud.get_model_version(session, version_id=version_id)
        if version is None:
            raise ModelError(f"no model version with id {version_id}")
        key = (version.id, version.name, version.sha256)
        if _LOADED is not None and _LOADED.key == key:
            return _LOADED
        with _LOCK:
            loaded = _OTHERS.get(key)
            if loaded is None:
                loaded = load_version(version, inference)
                logger.info("loaded model %s for work that names it", loaded.name)
            _OTHERS[key] = loaded
            _OTHERS.move_to_end(key)
            while len(_OTHERS) > OTHER_VERSIONS_KEPT:
                _OTHERS.popitem(last=False)
            return loaded


def load_classifier(model: str, inference: InferenceSettings) -> Classifier:
    """A :class:`~cxr_orient.modelstore.Classifier` for a registered version name or a
    ``.keras`` path (its card's SHA-256 is checked either way)."""
    from cxr_orient.modelstore import Classifier

    path = Path(model)
    if path.suffix == ".keras" and path.is_file():
        return Classifier.from_checkpoint(path)
    with session_scope() as session:
        version = crud.find_model_version(session, name=model)
        if version is None:
            raise ModelError(f"{model!r} is neither a .keras file nor a registered version")
        return load_version(version, inference).classifier
