"""Keras layers that make a network exactly invariant to how a film is stored.

A radiograph's view does not change when the film is rotated by a multiple of 90
degrees, mirrored, or stored with inverted greyscale (MONOCHROME1 read as
MONOCHROME2). Training with those transformations as augmentation teaches a network
to be *nearly* invariant, and "nearly" left a few rotated and inverted films on the
wrong side of the threshold. These layers make the invariance exact, by construction:

- :class:`DihedralOrbit` stacks the 8 rotations/reflections of every image along the
  batch axis, the trunk runs on all of them, and :class:`OrbitMean` averages the
  trunk's features over each image's 8 copies. Any rotation or flip of the input only
  permutes those copies, so the mean, and the prediction, cannot change.
- :class:`Abs` after a bias-free convolution on inputs centred on zero (0..255 mapped
  to -1..1) makes the features sign-invariant: inverting the film negates the centred
  input, the convolution is linear so its output is negated, and ``|.|`` removes the
  sign. Nothing after it can tell a film from its inversion.

Two more serve the heads that say more than the view:

- :class:`OrbitSplit` regroups a per-copy output ``(8 B, ...)`` as ``(B, 8, ...)``: a
  score for each of an image's 8 copies. Transforming the input permutes the copies, so
  the scores permute with it (an *equivariant* orientation head: which copy is upright).
- :class:`MahalanobisScore` is a fitted, non-trainable distance of pooled features from
  the chest radiographs seen in training (the unusual-image score).

All are registered Keras serializables (package ``cxr_orient``), so a checkpoint
that uses them loads with ``safe_mode=True`` once this module is imported
(:mod:`cxr_orient.modelstore` imports it).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

__all__ = [
    "ORBIT_SIZE",
    "STORED_AS",
    "Abs",
    "DihedralOrbit",
    "MahalanobisScore",
    "OrbitMean",
    "OrbitSplit",
    "orbit_copies",
]

#: The dihedral group of the square: 4 rotations, each with and without a mirror.
ORBIT_SIZE = 8


def orbit_copies(image: np.ndarray) -> list[np.ndarray]:
    """The 8 copies :class:`DihedralOrbit` makes of one ``(H, W, ...)`` square image, in
    its order (numpy, for labels and tests; the layer is the graph version)."""
    transposed = np.swapaxes(image, 0, 1)
    return [v for x in (image, transposed) for v in (x, x[::-1], x[:, ::-1], x[::-1, ::-1])]


def _stored_as() -> tuple[tuple[int, bool], ...]:
    upright = np.arange(36).reshape(6, 6)
    table = []
    for copy in range(ORBIT_SIZE):
        for k in range(4):
            for mirrored in (False, True):
                stored = np.rot90(upright[:, ::-1] if mirrored else upright, k)
                if np.array_equal(orbit_copies(stored)[copy], upright):
                    table.append((k, mirrored))
    return tuple(table)


#: When copy ``j`` of a stored image is the upright one, the image is stored as
#: ``STORED_AS[j] = (k, mirrored)``: ``stored == numpy.rot90(upright, k)`` (after a
#: left-right mirror of ``upright`` when ``mirrored``), so ``numpy.rot90(stored, -k)``
#: shows it upright (still mirrored when ``mirrored``).
STORED_AS: tuple[tuple[int, bool], ...] = _stored_as()


@keras.saving.register_keras_serializable(package="cxr_orient")
class DihedralOrbit(keras.layers.Layer):
    """``(B, H, W, C)`` square images -> ``(8 B, H, W, C)``: the 8 dihedral transforms of
    the batch, one block of ``B`` per transform (identity first)."""

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        batch = input_shape[0]
        return (None if batch is None else batch * ORBIT_SIZE, *input_shape[1:])

    def call(self, inputs: Any) -> Any:
        if inputs.shape[1] != inputs.shape[2]:
            raise ValueError(f"DihedralOrbit needs square images, got {inputs.shape}")
        transposed = ops.transpose(inputs, (0, 2, 1, 3))
        views = []
        for x in (inputs, transposed):
            views += [x, ops.flip(x, axis=1), ops.flip(x, axis=2),
                      ops.flip(ops.flip(x, axis=1), axis=2)]
        return ops.concatenate(views, axis=0)


@keras.saving.register_keras_serializable(package="cxr_orient")
class OrbitMean(keras.layers.Layer):
    """``(8 B, ...)`` from a trunk run on :class:`DihedralOrbit`'s output -> ``(B, ...)``:
    the mean over each image's 8 copies."""

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        batch = input_shape[0]
        return (None if batch is None else batch // ORBIT_SIZE, *input_shape[1:])

    def call(self, inputs: Any) -> Any:
        shape = ops.shape(inputs)
        grouped = ops.reshape(inputs, (ORBIT_SIZE, shape[0] // ORBIT_SIZE, *inputs.shape[1:]))
        return ops.mean(grouped, axis=0)


@keras.saving.register_keras_serializable(package="cxr_orient")
class Abs(keras.layers.Layer):
    """Elementwise absolute value."""

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return input_shape

    def call(self, inputs: Any) -> Any:
        return ops.abs(inputs)


@keras.saving.register_keras_serializable(package="cxr_orient")
class OrbitSplit(keras.layers.Layer):
    """``(8 B, ...)`` from a trunk run on :class:`DihedralOrbit`'s output -> ``(B, 8, ...)``:
    each image's 8 copies side by side, in :class:`DihedralOrbit`'s order."""

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        batch = input_shape[0]
        return (None if batch is None else batch // ORBIT_SIZE, ORBIT_SIZE, *input_shape[1:])

    def call(self, inputs: Any) -> Any:
        shape = ops.shape(inputs)
        grouped = ops.reshape(inputs, (ORBIT_SIZE, shape[0] // ORBIT_SIZE, *inputs.shape[1:]))
        order = (1, 0, *range(2, len(inputs.shape) + 1))
        return ops.transpose(grouped, order)


@keras.saving.register_keras_serializable(package="cxr_orient")
class MahalanobisScore(keras.layers.Layer):
    """``(B, D)`` features -> ``(B, 1)``: the smallest Mahalanobis distance to the class
    means, with one shared (shrunk) covariance, divided by ``sqrt(D)`` so that a typical
    training image scores about 1 whatever ``D`` is.

    The means and the precision matrix are weights (saved in the checkpoint) that
    :meth:`fit` sets from training features; nothing here is trained by gradient.
    """

    def __init__(self, classes: int, dims: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classes = int(classes)
        self.dims = int(dims)
        self.means = self.add_weight(shape=(self.classes, self.dims), initializer="zeros",
                                     trainable=False, name="means", dtype="float32")
        self.precision = self.add_weight(shape=(self.dims, self.dims), initializer="identity",
                                         trainable=False, name="precision", dtype="float32")

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "classes": self.classes, "dims": self.dims}

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (input_shape[0], 1)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, "float32")
        # (B, 1, D) - (1, C, D) -> (B, C, D); d2 = diff P diff^T per class.
        diff = ops.expand_dims(x, 1) - ops.expand_dims(self.means, 0)
        d2 = ops.sum(ops.matmul(diff, self.precision) * diff, axis=-1)
        nearest = ops.min(d2, axis=-1, keepdims=True)
        return ops.sqrt(ops.maximum(nearest, 0.0) / float(self.dims))

    def fit(self, features: Any, labels: Any, *, shrinkage: float = 0.01) -> None:
        """Class means and the shared covariance of ``features`` (numpy ``(N, D)``),
        shrunk towards its mean variance by ``shrinkage`` (a few hundred films cannot
        pin down a covariance of hundreds of dimensions)."""
        import numpy as np

        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels).astype(int)
        means = np.stack([x[y == c].mean(axis=0) for c in range(self.classes)])
        centred = x - means[y]
        cov = centred.T @ centred / max(1, len(x) - self.classes)
        target = np.eye(self.dims) * np.trace(cov) / self.dims
        cov = (1.0 - shrinkage) * cov + shrinkage * target
        self.means.assign(means.astype(np.float32))
        self.precision.assign(np.linalg.inv(cov).astype(np.float32))
