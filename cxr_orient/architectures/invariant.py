"""The compact trunk made exactly invariant to the 8 turns/mirrorings of the film and to
greyscale inversion: at 128 px, at 64 px (the shipped view network) and slim."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from cxr_orient.architectures.blocks import (
    conv_bn_relu,
    image_input,
    load_full_weights,
    softmax_head,
)
from cxr_orient.layers import Abs, DihedralOrbit, OrbitMean

__all__ = [
    "build_compact_invariant",
    "build_compact_invariant_64",
    "build_compact_invariant_slim",
    "invariant_trunk",
]


def build_compact_invariant(
    *,
    input_size: int = 256,
    weights_path: Path | None = None,
    width: float = 1.0,
    pool: int = 2,
    name: str = "compact_invariant",
) -> keras.Model:
    """:func:`build_compact`'s trunk made exactly invariant to the 8 rotations/flips of the
    film and to greyscale inversion (:mod:`cxr_orient.layers` explains how).

    The input is centred (0..255 -> -1..1) so that inversion is a sign change, averaged
    over ``pool`` x ``pool`` blocks (a view is told from the outline of the chest, and
    the 8 copies would otherwise cost 8 times ``compact``), then the trunk runs on all 8
    dihedral copies, its first convolution has no bias and is followed by ``|.|``, and
    the pooled features are averaged over the copies before the classifier. Rotated,
    mirrored and inverted films therefore get the very same answer as the film as stored
    (to float rounding), and training needs no luck to learn it.

    ``pool=2`` (this name) runs the trunk at 128 px, about 2x ``compact``'s arithmetic;
    :func:`build_compact_invariant_64` (the default) at 64 px, about half of it.
    """
    inputs = image_input(input_size)
    trunk = invariant_trunk(inputs, width=width, pool=pool, input_size=input_size)
    x = layers.Dropout(0.3, name="dropout")(trunk["features"])
    model = keras.Model(inputs, softmax_head(x), name=name)
    load_full_weights(model, weights_path)
    return model


def invariant_trunk(
    inputs: keras.KerasTensor, *, width: float, pool: int, input_size: int
) -> dict[str, keras.KerasTensor]:
    """The invariant trunk of :func:`build_compact_invariant` (its layers, in its order,
    with its names), returning the tensors heads tap: ``block2`` and ``block3`` (per
    copy, ``(8 B, h, w, c)``) and ``features`` (pooled, averaged over the copies)."""

    def ch(n: int) -> int:
        return max(8, round(n * width / 4.0) * 4)

    # Average pooling must tile the image exactly to commute with rotations; the trunk
    # halves the size five times.
    if input_size % pool or input_size < 32 * pool:
        raise ValueError(
            f"input_size {input_size} must be a multiple of {pool} and at least {32 * pool}"
        )
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="centre")(inputs)
    if pool > 1:
        x = layers.AveragePooling2D(pool, name="downsample")(x)
    x = DihedralOrbit(name="orbit")(x)
    x = layers.Conv2D(ch(16), 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = Abs(name="stem_abs")(x)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    tapped: dict[str, keras.KerasTensor] = {}
    for i, filters in enumerate((32, 64, 96, 128), start=1):
        x = conv_bn_relu(x, ch(filters), name=f"block{i}a")
        if i >= 3:
            x = conv_bn_relu(x, ch(filters), name=f"block{i}b")
        x = layers.MaxPooling2D(name=f"block{i}_pool")(x)
        tapped[f"block{i}"] = x
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    tapped["features"] = OrbitMean(name="orbit_mean")(x)
    return tapped


def build_compact_invariant_64(
    *, input_size: int = 256, weights_path: Path | None = None
) -> keras.Model:
    """The default: :func:`build_compact_invariant` on a 64 px average of a 256 px input
    (``pool=4``); 0.42 M params, about half ``compact``'s arithmetic and a quarter of
    ``compact_invariant``'s."""
    return build_compact_invariant(
        input_size=input_size, weights_path=weights_path, pool=4, name="compact_invariant_64"
    )


def build_compact_invariant_slim(
    *, input_size: int = 256, weights_path: Path | None = None
) -> keras.Model:
    """:func:`build_compact_invariant` with half the channels (8..64), ~0.11 M params (a
    candidate beside ``compact_invariant_64`` when the shipped model was chosen)."""
    return build_compact_invariant(
        input_size=input_size, weights_path=weights_path, width=0.5, name="compact_invariant_slim"
    )
