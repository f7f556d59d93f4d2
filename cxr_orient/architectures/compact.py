"""The compact CNN (five Conv-BN-ReLU stages, global pooling) and its wider sibling."""

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

__all__ = ["build_compact", "build_compact_wide"]


def build_compact(
    *,
    input_size: int = 256,
    weights_path: Path | None = None,
    width: float = 1.0,
    name: str = "compact",
) -> keras.Model:
    """The default: five Conv-BN-ReLU stages (16..128 channels), global pooling, ~0.42 M params.

    Global average pooling rather than Flatten keeps the decision independent of
    where the anatomy sits in the frame and the parameter count small, which
    matters for CPU inference and for generalising from a few hundred images.
    ``width`` multiplies every stage's channels (parameters grow as its square).
    """

    def ch(n: int) -> int:
        return max(8, round(n * width / 4.0) * 4)

    inputs = image_input(input_size)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = conv_bn_relu(x, ch(16), strides=2, name="stem")  # /2
    for i, filters in enumerate((32, 64, 96, 128), start=1):
        x = conv_bn_relu(x, ch(filters), name=f"block{i}a")
        if i >= 3:
            x = conv_bn_relu(x, ch(filters), name=f"block{i}b")
        x = layers.MaxPooling2D(name=f"block{i}_pool")(x)  # /4, /8, /16, /32
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    model = keras.Model(inputs, softmax_head(x), name=name)
    load_full_weights(model, weights_path)
    return model


def build_compact_wide(*, input_size: int = 256, weights_path: Path | None = None) -> keras.Model:
    """:func:`build_compact` with 1.25x the channels (20..160), ~0.66 M params, ~1.5x the
    CPU cost of ``compact``."""
    return build_compact(
        input_size=input_size, weights_path=weights_path, width=1.25, name="compact_wide"
    )
