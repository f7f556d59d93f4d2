"""Checkpoints with sidecar model cards, integrity checks and calibrated inference.

A checkpoint is ``<name>.keras`` with ``<name>.json`` beside it: the
:class:`ModelCard` records labels, input size, the temperature that calibrates
its probabilities, the confidence under which a prediction needs review, the
file's SHA-256, and how it was trained and evaluated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr_orient import layers as _layers  # noqa: F401 - registers the layers checkpoints use
from cxr_orient.answer import LOW_CONFIDENCE, UNUSUAL_IMAGE, Answer
from cxr_orient.calibration import (
    DECISION_THRESHOLD,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    platt_targets,
    predicted_class,
)
from cxr_orient.errors import ModelError, ModelIntegrityError
from cxr_orient.imaging.header import PROJECTIONS

logger = logging.getLogger(__name__)

__all__ = [
    "DECISION_THRESHOLD",
    "LOW_CONFIDENCE",
    "PROJECTIONS",
    "UNUSUAL_IMAGE",
    "Classifier",
    "HeadOutputs",
    "ModelCard",
    "apply_temperature",
    "card_path_for",
    "expected_calibration_error",
    "file_sha256",
    "fit_temperature",
    "load_checkpoint",
    "orientation_answer",
    "platt_targets",
    "predicted_class",
    "projection_answer",
    "read_card",
    "save_checkpoint",
    "to_model_input",
    "tta_views",
]

TTA_MODES = ("none", "dihedral", "dihedral+invert")


def tta_views(x: np.ndarray, mode: str) -> list[np.ndarray]:
    """The (N, H, W, C) batch under each transform of a test-time augmentation mode."""
    if mode == "none":
        return [x]
    views = []
    for flipped in (x, x[:, :, ::-1]):
        views += [np.rot90(flipped, k=k, axes=(1, 2)) for k in range(4)]
    if mode == "dihedral+invert":
        views += [255.0 - v for v in views]
    return [np.ascontiguousarray(v) for v in views]


@dataclass
class ModelCard:
    """What a checkpoint is and how to use it; saved as JSON beside the ``.keras`` file."""

    name: str
    architecture: str
    input_size: int
    labels: tuple[str, ...] = ("frontal", "lateral")
    temperature: float = 1.0
    review_threshold: float = 0.9
    sha256: str = ""
    #: Test-time augmentation: "none", "dihedral" (mean over the 8 rotations/flips) or
    #: "dihedral+invert" (those 8 and their greyscale inversions, 16 passes). Averaging
    #: over the transforms makes the prediction exactly invariant to them.
    test_time_augmentation: str = "none"
    #: For a model with an unusual-image head: scores above this are unlike the chest
    #: films it was trained on (fitted on validation films; None without the head).
    unusual_threshold: float | None = None
    #: For a model with a PA/AP head: a frontal's projection is stated when
    #: max(p_ap, 1 - p_ap) is at least this, left empty below it (None without the head).
    projection_threshold: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.test_time_augmentation not in TTA_MODES:
            raise ModelError(
                f"unknown test_time_augmentation {self.test_time_augmentation!r}; "
                f"known: {', '.join(TTA_MODES)}"
            )

    def to_json(self) -> str:
        data = finite_or_none(dataclasses.asdict(self))
        data["labels"] = list(self.labels)
        return json.dumps(data, indent=2, default=json_default, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            logger.warning("model card: ignoring unknown fields %s", sorted(unknown))
        data = {k: v for k, v in data.items() if k in known}
        data["labels"] = tuple(data.get("labels", ("frontal", "lateral")))
        return cls(**data)


def finite_or_none(data: Any) -> Any:
    """Undefined metrics (NaN, infinities) become None, so the JSON written is strict."""
    if isinstance(data, float | np.floating):
        return float(data) if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_or_none(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite_or_none(v) for v in data]
    return data


def json_default(value: object) -> object:
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path_for(checkpoint_path: Path | str) -> Path:
    """``compact-v1.keras`` -> ``compact-v1.json``."""
    return Path(checkpoint_path).with_suffix(".json")


def save_checkpoint(model: keras.Model, card: ModelCard, directory: Path | str) -> Path:
    """Write ``<directory>/<card.name>.keras`` and its card; return the checkpoint path.

    ``card.sha256`` is set to the digest of the written file. The optimizer state is
    left out (inference never needs it; it would double or triple the file): a compiled
    model is saved through an uncompiled copy (rebuilt from its config) holding the same
    weights (``clone_model`` would compile the copy too).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{card.name}.keras"
    if getattr(model, "optimizer", None) is not None:
        clone = model.__class__.from_config(model.get_config())
        clone.set_weights(model.get_weights())
        model = clone
    model.save(path)
    card.sha256 = file_sha256(path)
    card_path_for(path).write_text(card.to_json() + "\n", encoding="utf-8")
    logger.info("saved checkpoint %s (sha256 %s)", path, card.sha256[:12])
    return path


def read_card(checkpoint_path: Path | str) -> ModelCard:
    """Read the card beside ``checkpoint_path``."""
    card_path = card_path_for(checkpoint_path)
    try:
        return ModelCard.from_json(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelError(f"model card missing: {card_path}") from e
    except (ValueError, TypeError) as e:
        raise ModelError(f"model card unreadable: {card_path}: {e}") from e


def load_checkpoint(path: Path | str, *, expected_sha256: str | None = None) -> keras.Model:
    """Load a ``.keras`` checkpoint after checking its SHA-256 (when one is expected).

    Loads with ``safe_mode=True`` and without the optimizer state.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    if expected_sha256 is not None:
        actual = file_sha256(path)
        if actual.lower() != expected_sha256.lower():
            raise ModelIntegrityError(
                f"checkpoint {path} has sha256 {actual}, expected {expected_sha256}"
            )
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # keras raises many types for a corrupt or foreign file
        raise ModelError(f"cannot load checkpoint {path}: {e}") from e


def with_mixed_bfloat16(model: keras.Model, card: ModelCard) -> keras.Model:
    """The same network rebuilt under Keras' ``mixed_bfloat16`` policy, with ``model``'s
    weights: layers compute in bfloat16, variables and the softmax stay float32.

    On an H100 this is what lifts the compact model past 30,000 images/s on the worker's
    input path (bench/results/h100.md); answers move by about 1e-5.
    """
    from cxr_orient.architectures import build_model

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = build_model(card.architecture, input_size=card.input_size)
    finally:
        keras.config.set_dtype_policy(previous)
    mixed.set_weights(model.get_weights())
    return mixed


def padded_batch_size(n: int, *, smallest: int = 8) -> int:
    """The bucket a batch of ``n`` is padded to: the next power of two, at least ``smallest``.

    JAX compiles the model once per input shape; celery-batches hands the worker any
    size from 1 to CXR_BATCH_SIZE, so without buckets a GPU worker spends its first
    minutes compiling (about a second each time) instead of classifying. With buckets
    there are at most log2(batch size) + 1 shapes, and padding costs at most 2x the
    arithmetic of a batch, which a GPU does not notice.
    """
    if n <= smallest:
        return smallest
    return 1 << (n - 1).bit_length()


def _compiles_per_shape() -> bool:
    """Whether the Keras backend compiles a new program for each input shape (JAX does;
    TensorFlow's ``reduce_retracing`` generalises shapes itself, and padding would only
    waste CPU time there)."""
    return keras.backend.backend() == "jax"


def to_model_input(batch: np.ndarray) -> np.ndarray:
    """(N, H, W) grey or (N, H, W, 1 or 3) images -> (N, H, W, 3) holding 0..255, the
    model's input: uint8 stays uint8 (the model's input layer casts, its Rescaling layer
    scales), anything else becomes float32. Grey is copied to three channels here, on
    the host (see :meth:`Classifier.pre_process` for why)."""
    x = np.asarray(batch)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected (N,H,W) or (N,H,W,3) images, got shape {x.shape}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x if x.dtype == np.uint8 else x.astype(np.float32, copy=False)


@dataclass(frozen=True)
class HeadOutputs:
    """What one forward pass gives: the view's uncalibrated (N, 2) softmax, and, when the
    model has them, the (N, 8) orientation softmax over the copies and (N,) scores:
    the unusual-image score, p(not a chest film) and p_ap."""

    view: np.ndarray
    orientation: np.ndarray | None = None
    unusual: np.ndarray | None = None
    not_chest: np.ndarray | None = None
    projection: np.ndarray | None = None


def orientation_answer(copies: np.ndarray, label: str) -> tuple[int, bool | None]:
    """``(rotation in degrees, mirrored)`` from one image's softmax over its 8 copies:
    the rotation whose two copies (mirrored or not) hold the most probability, then, for
    a frontal, the more probable of those two."""
    from cxr_orient.layers import STORED_AS

    p = np.asarray(copies, dtype=np.float64)
    by_rotation = np.zeros(4)
    for copy, (k, _) in enumerate(STORED_AS):
        by_rotation[k] += p[copy]
    k_best = int(np.argmax(by_rotation))
    if label != "frontal":
        return 90 * k_best, None
    plain, mirror = (p[STORED_AS.index((k_best, m))] for m in (False, True))
    return 90 * k_best, bool(mirror > plain)


def projection_answer(p_ap: float | None, label: str, threshold: float | None) -> str | None:
    """ "PA" or "AP" for a frontal whose confidence ``max(p_ap, 1 - p_ap)`` reaches
    ``threshold`` (0.5 when the card has none); None otherwise (abstention), for a
    lateral, and without a PA/AP head."""
    if p_ap is None or label != "frontal":
        return None
    if max(p_ap, 1.0 - p_ap) < (0.5 if threshold is None else threshold):
        return None
    return PROJECTIONS[int(p_ap >= 0.5)]


class Classifier:
    """A loaded model with its card: uint8 images in, calibrated predictions out."""

    def __init__(self, model: keras.Model, card: ModelCard) -> None:
        self.model = model
        self.card = card

    @classmethod
    def from_checkpoint(cls, path: Path | str, *, verify: bool = True) -> Classifier:
        """Load a checkpoint and its card; the card's SHA-256 is checked when ``verify``."""
        card = read_card(path)
        model = load_checkpoint(path, expected_sha256=card.sha256 if verify else None)
        return cls(model, card)

    @property
    def input_size(self) -> int:
        return self.card.input_size

    def pre_process(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W) grey or (N, H, W, 3) uint8 -> (N, H, W, 3) holding 0..255
        (:func:`to_model_input`), checked against the card's input size.

        uint8 stays uint8: the model's input layer casts and its Rescaling layer scales
        on the device, so a GPU receives a quarter of float32's bytes. Grey is copied to
        three channels here, on the host; the worker avoids that by handing over RGB
        made in its decode threads. (Measured on an H100, 1024 images: RGB uint8 fed
        directly 29,000 images/s; the same copy done on the device, by any of
        concatenate/repeat/tile after the input, 3,600-5,400: XLA's convolution on a
        three-channel tensor made inside the graph is the slow part.)
        """
        x = to_model_input(batch)
        size = self.card.input_size
        if x.shape[1:3] != (size, size):
            raise ValueError(f"model expects {size}x{size} images, got {x.shape[1]}x{x.shape[2]}")
        return x

    def predict_raw(self, batch: np.ndarray) -> np.ndarray:
        """Uncalibrated (N, 2) softmax output, averaged over the card's test-time views."""
        x = self.pre_process(batch)
        if len(x) == 0:
            return np.zeros((0, 2), dtype=np.float64)
        views = tta_views(x, self.card.test_time_augmentation)
        # One call for all views: fewer, larger batches are what accelerators want.
        stacked = np.concatenate(views) if len(views) > 1 else x
        n = len(stacked)
        padded = self.padded_size(n)
        if padded > n:
            stacked = np.concatenate(
                [stacked, np.zeros((padded - n, *stacked.shape[1:]), dtype=stacked.dtype)]
            )
        probs = self._forward(stacked)["view"][:n]
        return probs.reshape(len(views), len(x), 2).mean(axis=0)

    def padded_size(self, n: int) -> int:
        """The batch size ``n`` images are padded to before the forward pass
        (:func:`padded_batch_size` on JAX, ``n`` elsewhere)."""
        return padded_batch_size(n) if _compiles_per_shape() else n

    def _forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One ``predict_on_batch``; every output by name (a one-output model's is
        ``view``), as float64 numpy."""
        out = self.model.predict_on_batch(x)
        named = out if isinstance(out, dict) else {"view": out}
        return {
            k: np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64) for k, v in named.items()
        }

    @property
    def has_heads(self) -> bool:
        """Whether the model has the orientation and unusual-image heads."""
        return any(name == "orientation" for name in getattr(self.model, "output_names", ()))

    def predict_heads(self, batch: np.ndarray) -> HeadOutputs:
        """Every head's raw output for ``batch`` (one forward pass; no test-time
        augmentation, which a model with heads refuses: it would mix the copies)."""
        if not self.has_heads:
            return HeadOutputs(view=self.predict_raw(batch))
        x = self.pre_process(batch)
        n = len(x)
        if n == 0:
            return HeadOutputs(np.zeros((0, 2)), np.zeros((0, 8)), np.zeros(0))
        padded = self.padded_size(n)
        if padded > n:
            x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), dtype=x.dtype)])
        out = self._forward(x)
        optional = {k: out[k][:n, 0] for k in ("not_chest", "projection") if k in out}
        return HeadOutputs(
            view=out["view"][:n],
            orientation=out["orientation"][:n],
            unusual=out["unusual"][:n, 0],
            **optional,
        )

    def predict_raw_in_batches(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """:meth:`predict_raw` over ``images`` ``batch_size`` at a time (evaluation and
        training sets that do not fit one call)."""
        parts = [
            self.predict_raw(images[i : i + batch_size]) for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.float64)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated (N, 2) probabilities [p_frontal, p_lateral]."""
        return apply_temperature(self.predict_raw(batch), self.card.temperature)

    def warm_up(self, max_batch: int) -> list[int]:
        """Compile the inference program for every batch shape up to ``max_batch`` now,
        not during the first real batches; returns the sizes run.

        On JAX that is each padding bucket (a few seconds in all on a GPU); elsewhere one
        batch of ``max_batch`` traces the graph (over a second on a CPU).
        """
        size = self.card.input_size
        sizes = (
            sorted({padded_batch_size(n) for n in range(1, max_batch + 1)})
            if _compiles_per_shape()
            else [max_batch]
        )
        for n in sizes:
            self.predict_raw(np.zeros((n, size, size, 3), np.uint8))
        return sizes

    def post_process(
        self,
        probs: np.ndarray,
        *,
        orientation: np.ndarray | None = None,
        unusual: np.ndarray | None = None,
        not_chest: np.ndarray | None = None,
        projection: np.ndarray | None = None,
    ) -> list[Answer]:
        """The prediction rule: the label by :func:`predicted_class`, the confidence as
        the larger probability, review below the card's ``review_threshold`` or above
        its ``unusual_threshold``; with an orientation head, which way up
        (:func:`orientation_answer`); with a PA/AP head, a frontal's projection
        (:func:`projection_answer`)."""
        labels = self.card.labels
        probs = np.asarray(probs, dtype=np.float64)
        threshold = self.card.unusual_threshold
        out = []
        for i, ((p_front, p_lat), index) in enumerate(
            zip(probs, predicted_class(probs[:, 1]), strict=True)
        ):
            label = labels[int(index)]
            confidence = float(max(p_front, p_lat))
            rotation, mirrored = (
                orientation_answer(orientation[i], label)
                if orientation is not None
                else (None, None)
            )
            score = float(unusual[i]) if unusual is not None else None
            is_unusual = score is not None and threshold is not None and score > threshold
            reasons = tuple(
                reason
                for reason, applies in (
                    (LOW_CONFIDENCE, confidence < self.card.review_threshold),
                    (UNUSUAL_IMAGE, is_unusual),
                )
                if applies
            )
            p_ap = float(projection[i]) if projection is not None else None
            out.append(
                Answer(
                    label=label,
                    confidence=confidence,
                    p_frontal=float(p_front),
                    p_lateral=float(p_lat),
                    needs_review=bool(reasons),
                    rotation=rotation,
                    mirrored=mirrored,
                    unusual_score=score,
                    review_reasons=reasons,
                    p_not_chest=float(not_chest[i]) if not_chest is not None else None,
                    p_ap=p_ap,
                    projection=projection_answer(p_ap, label, self.card.projection_threshold),
                )
            )
        return out

    def predict(self, batch: np.ndarray) -> list[Answer]:
        """Calibrated answers with everything the model's heads say."""
        heads = self.predict_heads(batch)
        return self.post_process(
            apply_temperature(heads.view, self.card.temperature),
            orientation=heads.orientation,
            unusual=heads.unusual,
            not_chest=heads.not_chest,
            projection=heads.projection,
        )
