"""The 2019 tutorial's network, kept as the baseline the compact models are measured
against (``python -m bench``)."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from cxr_orient.architectures.blocks import image_input, load_full_weights, softmax_head

__all__ = ["build_tutorial2019"]


def build_tutorial2019(*, input_size: int = 256, weights_path: Path | None = None) -> keras.Model:
    """The 2019 tutorial's network, layer for layer (~130 M parameters at 256 px).

    Kept as a baseline: its Flatten -> Dense(256) is most of the parameters and
    makes it slow on CPU and sensitive to where anatomy sits in the frame.
    """
    inputs = image_input(input_size)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.Conv2D(64, 2, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Dropout(0.3, name="drop1")(x)
    x = layers.Conv2D(128, 2, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Dropout(0.3, name="drop2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, activation="relu", name="fc")(x)
    model = keras.Model(inputs, softmax_head(x), name="tutorial2019")
    # As in the tutorial: Adam with binary cross-entropy on one-hot labels.
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    load_full_weights(model, weights_path)
    return model
