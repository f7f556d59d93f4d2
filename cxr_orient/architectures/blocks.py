"""What every architecture shares: the image input, the view head, a Conv-BN-ReLU
stage, and loading a full ``.weights.h5`` file."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from cxr_orient.errors import ModelError

__all__ = ["NUM_CLASSES", "conv_bn_relu", "image_input", "load_full_weights", "softmax_head"]

NUM_CLASSES = 2


def image_input(input_size: int) -> keras.KerasTensor:
    if input_size < 32:
        raise ValueError(f"input_size must be at least 32, got {input_size}")
    return keras.Input(shape=(input_size, input_size, 3), dtype="float32", name="image")


def softmax_head(x: keras.KerasTensor) -> keras.KerasTensor:
    # float32 output even under a mixed-precision policy, for stable probabilities.
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="view")(x)


def conv_bn_relu(
    x: keras.KerasTensor, filters: int, *, strides: int = 1, name: str
) -> keras.KerasTensor:
    x = layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    # momentum 0.9: with a few hundred training images an epoch is ~15 steps, and the
    # default 0.99 leaves the moving statistics (used at validation) far behind.
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def load_full_weights(model: keras.Model, weights_path: Path | None) -> None:
    """Architectures without a pretrained backbone take a full ``.weights.h5`` file, if any."""
    if weights_path is None:
        return
    path = Path(weights_path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        model.load_weights(str(path))
    except (ValueError, OSError) as e:
        raise ModelError(f"cannot load weights for {model.name} from {path}: {e}") from e
