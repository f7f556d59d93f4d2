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
- :class:`SpatialMeanStd` pools a per-copy feature map to its channels' spatial mean and
  standard deviation (a rotation of the copy only moves its pixels, so both are
  unchanged); :class:`ScopeScore` joins a trained chest-or-not logit to the unusual-image
  score, so that one threshold (1) decides both.

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
    "PIXEL_STATISTICS",
    "STORED_AS",
    "Abs",
    "DihedralOrbit",
    "MahalanobisScore",
    "OrbitMean",
    "OrbitSplit",
    "PixelStatistics",
    "ScopeScore",
    "SpatialMeanStd",
    "UnusualScore",
    "orbit_copies",
    "orientation_entropy",
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
            views += [
                x,
                ops.flip(x, axis=1),
                ops.flip(x, axis=2),
                ops.flip(ops.flip(x, axis=1), axis=2),
            ]
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
        self.means = self.add_weight(
            shape=(self.classes, self.dims),
            initializer="zeros",
            trainable=False,
            name="means",
            dtype="float32",
        )
        self.precision = self.add_weight(
            shape=(self.dims, self.dims),
            initializer="identity",
            trainable=False,
            name="precision",
            dtype="float32",
        )

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


#: Grey-level bins of :class:`PixelStatistics`' histogram (of 0..255 input values).
PIXEL_HISTOGRAM_BINS = 16
#: How many statistics :class:`PixelStatistics` gives per image.
PIXEL_STATISTICS = PIXEL_HISTOGRAM_BINS + 5


@keras.saving.register_keras_serializable(package="cxr_orient")
class PixelStatistics(keras.layers.Layer):
    """``(B, H, W, C)`` images holding 0..255 (channel 0 read) -> ``(B, 21)``: simple
    statistics of the pixels themselves, each unchanged by the 8 dihedral transforms
    and by greyscale inversion, like the view:

    - the square-rooted 16-bin grey-level histogram folded onto itself
      (``sqrt h_i + sqrt h_(15-i)`` and ``|sqrt h_i - sqrt h_(15-i)|``, i < 8): how much
      of the film is background, how grey it is;
    - the log mean absolute difference of neighbouring pixels at full size and on the
      4x4 block average (edge density at the film's detail and at the trunk's 64 px),
      and the log mean absolute Laplacian at full size (grain, text, noise);
    - how far the centre quarter's mean lies from the whole image's;
    - the fraction of pixels at either end of the range (saturated or cut off).

    Nothing is learnt; the unusual-image score measures these beside the trunk's
    features, fitted on chest films only.
    """

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (input_shape[0], PIXEL_STATISTICS)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs[..., 0], "float32")
        bins = PIXEL_HISTOGRAM_BINS
        # Values are whole numbers 0..255: bin i holds 16 i .. 16 i + 15 exactly.
        at_least = [
            ops.mean(ops.cast(x >= 256.0 * i / bins - 0.5, "float32"), axis=(1, 2))
            for i in range(bins + 1)
        ]
        root = [ops.sqrt(ops.maximum(at_least[i] - at_least[i + 1], 0.0)) for i in range(bins)]
        half = bins // 2
        folded = [root[i] + root[bins - 1 - i] for i in range(half)] + [
            ops.abs(root[i] - root[bins - 1 - i]) for i in range(half)
        ]
        x = x / 255.0

        def edges(y: Any) -> Any:
            return ops.mean(ops.abs(y[:, 1:, :] - y[:, :-1, :]), axis=(1, 2)) + ops.mean(
                ops.abs(y[:, :, 1:] - y[:, :, :-1]), axis=(1, 2)
            )

        size = inputs.shape[1]
        block = ops.mean(ops.reshape(x, (-1, size // 4, 4, size // 4, 4)), axis=(2, 4))
        laplacian = (
            4.0 * x[:, 1:-1, 1:-1]
            - x[:, :-2, 1:-1]
            - x[:, 2:, 1:-1]
            - x[:, 1:-1, :-2]
            - x[:, 1:-1, 2:]
        )
        quarter = size // 4
        centre = ops.mean(x[:, quarter : size - quarter, quarter : size - quarter], axis=(1, 2))
        extremes = ops.mean(
            ops.cast((x <= 0.5 / 255.0) | (x >= 254.5 / 255.0), "float32"), axis=(1, 2)
        )
        stats = [
            ops.log(edges(x) + 1e-4),
            ops.log(edges(block) + 1e-4),
            ops.log(ops.mean(ops.abs(laplacian), axis=(1, 2)) + 1e-4),
            ops.abs(centre - ops.mean(x, axis=(1, 2))),
            extremes,
        ]
        return ops.stack(folded + stats, axis=-1)


@keras.saving.register_keras_serializable(package="cxr_orient")
class UnusualScore(keras.layers.Layer):
    """``[(B, 1) feature distance, (B, 8) orientation softmax] -> (B, 1)``: the larger of
    the distance and the orientation head's entropy, each divided by its scale
    (weights that :meth:`fit` sets from validation chest films).

    The entropy is the second line: a chest film, however it is stored, has one copy
    that is upright and the orientation head, trained only on chest films, says which
    with confidence; an image that is not a chest film has no upright copy, and the
    head spreads its probability (the self-supervised task's confidence as an
    out-of-distribution signal, Hendrycks et al. 2019). Both parts are unchanged by the
    8 dihedral transforms and by inversion, so the score is too.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scales = self.add_weight(
            shape=(2,), initializer="ones", trainable=False, name="scales", dtype="float32"
        )

    def compute_output_shape(self, input_shapes: Any) -> tuple[Any, ...]:
        return (input_shapes[0][0], 1)

    def call(self, inputs: Any) -> Any:
        distance, copies = inputs
        return ops.maximum(
            ops.cast(distance, "float32") / self.scales[0],
            orientation_entropy(copies) / self.scales[1],
        )

    def fit(self, distances: Any, copies: Any, *, quantile: float = 0.9975) -> None:
        """Each part's scale: its ``quantile`` over validation chest films (numpy
        ``(N,)`` distances and ``(N, 8)`` orientation softmaxes)."""
        d = np.asarray(distances, dtype=np.float64).reshape(-1)
        p = np.asarray(copies, dtype=np.float64)
        entropy = -(p * np.log(p + 1e-12)).sum(axis=-1)
        self.scales.assign(
            np.array([np.quantile(d, quantile), np.quantile(entropy, quantile)], dtype=np.float32)
        )


def orientation_entropy(copies: Any) -> Any:
    """``(B, 8)`` softmax over the copies -> ``(B, 1)`` its entropy in nats (0 for one
    certain copy, log 8 = 2.08 for none preferred)."""
    p = ops.cast(copies, "float32")
    return -ops.sum(p * ops.log(p + 1e-12), axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="cxr_orient")
class SpatialMeanStd(keras.layers.Layer):
    """``(B, H, W, C)`` -> ``(B, 2 C)``: each channel's spatial mean, then its spatial
    standard deviation. Rotating or mirroring the map only permutes its pixels, so both
    are unchanged; after :class:`OrbitMean` they are invariant like the view."""

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (input_shape[0], 2 * input_shape[-1])

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, "float32")
        mean = ops.mean(x, axis=(1, 2))
        variance = ops.mean(ops.square(x), axis=(1, 2)) - ops.square(mean)
        return ops.concatenate([mean, ops.sqrt(ops.maximum(variance, 0.0) + 1e-12)], axis=-1)


@keras.saving.register_keras_serializable(package="cxr_orient")
class ScopeScore(keras.layers.Layer):
    """``[(B, 1) unusual-image score, (B, 1) not-a-chest-film logit] -> (B, 1)``: the
    larger of the score over its threshold and ``exp(logit - logit threshold)``, so
    that the result passes 1 exactly when either part passes its own threshold (both
    are weights, set by :meth:`fit`). One threshold, 1, then decides "unusual" for the
    distance, the orientation entropy and the trained chest-or-not head together."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thresholds = self.add_weight(
            shape=(2,), initializer="ones", trainable=False, name="thresholds", dtype="float32"
        )

    def compute_output_shape(self, input_shapes: Any) -> tuple[Any, ...]:
        return (input_shapes[0][0], 1)

    def call(self, inputs: Any) -> Any:
        score, logit = (ops.cast(t, "float32") for t in inputs)
        excess = ops.minimum(logit - self.thresholds[1], 30.0)
        return ops.maximum(score / self.thresholds[0], ops.exp(excess))

    def fit(self, score_threshold: float, logit_threshold: float) -> None:
        """Set the unusual-image score's threshold and the chest-or-not logit's."""
        if score_threshold <= 0:
            raise ValueError(f"score threshold must be positive, got {score_threshold}")
        self.thresholds.assign(np.array([score_threshold, logit_threshold], dtype=np.float32))
