"""Films as the recipes handle them: a subset by file name, stored in one of the 8
dihedral poses, augmented copies, and a model's outputs over many of them in batches."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from cxr_orient.layers import STORED_AS
from training.augment import augmented_copies
from training.data import LabelledImages

__all__ = ["augmented_copies", "features", "predict_batches", "rgb", "store_as", "subset_files"]


def subset_files(data: LabelledImages, files: Sequence[str]) -> LabelledImages:
    """The films of ``data`` named in ``files`` (e.g. a part of ``split.json``)."""
    index = {f: i for i, f in enumerate(data.files)}
    return data.subset([index[f] for f in files])


def store_as(image: np.ndarray, copy: int) -> np.ndarray:
    """The upright ``image`` stored so that its copy ``copy`` is the upright one."""
    k, mirrored = STORED_AS[copy]
    return np.ascontiguousarray(np.rot90(image[:, ::-1] if mirrored else image, k))


def rgb(batch: np.ndarray) -> np.ndarray:
    """Grey ``(B, H, W)`` films as the model's three-channel input."""
    return np.repeat(np.asarray(batch)[..., np.newaxis], 3, axis=-1)


def predict_batches(model: keras.Model, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """A one-output model over ``images``, ``batch`` at a time, as float64."""
    return np.concatenate(
        [
            np.asarray(
                keras.ops.convert_to_numpy(model.predict_on_batch(rgb(images[i : i + batch]))),
                dtype=np.float64,
            )
            for i in range(0, len(images), batch)
        ]
    )


def features(extractor: keras.Model, images: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """A model with named outputs over ``images``, ``batch`` at a time: name -> float64."""
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch):
        out = extractor.predict_on_batch(rgb(images[i : i + batch]).astype(np.float32))
        for k, v in out.items():
            parts.setdefault(k, []).append(
                np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)
            )
    return {k: np.concatenate(v) for k, v in parts.items()}
