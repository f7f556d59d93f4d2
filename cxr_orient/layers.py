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

All three are registered Keras serializables (package ``cxr_orient``), so a checkpoint
that uses them loads with ``safe_mode=True`` once this module is imported
(:mod:`cxr_orient.modelstore` imports it).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["ORBIT_SIZE", "Abs", "DihedralOrbit", "OrbitMean"]

#: The dihedral group of the square: 4 rotations, each with and without a mirror.
ORBIT_SIZE = 8


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
