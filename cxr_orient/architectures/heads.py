"""The shipped view network with more heads: which way up and the unusual-image score
(``heads``, v2), the score also asking the orientation head (``heads2``, v3), and the
chest-or-not and PA/AP heads (``heads3``, v4)."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from cxr_orient.architectures.blocks import (
    NUM_CLASSES,
    conv_bn_relu,
    image_input,
    load_full_weights,
    softmax_head,
)
from cxr_orient.architectures.invariant import invariant_trunk
from cxr_orient.layers import (
    ORBIT_SIZE,
    MahalanobisScore,
    OrbitMean,
    OrbitSplit,
    ScopeScore,
    SpatialMeanStd,
    UnusualScore,
)

__all__ = [
    "ORIENTATION_MEMBERS",
    "SCOPE_FEATURE_DIMS",
    "UNUSUAL_FEATURE_DIMS",
    "build_compact_invariant_64_heads",
    "build_compact_invariant_64_heads2",
    "build_compact_invariant_64_heads3",
]


#: Features the unusual-image score measures: the trunk's pooled stages 2 and 3 and its
#: final features, each averaged over the 8 copies (invariant like the view).
UNUSUAL_FEATURE_DIMS = 64 + 96 + 128


#: The orientation head is a mean of this many independently initialised scorers: one
#: scorer's frontal-mirroring accuracy on held-out patients moved between 0.95 and 0.99
#: with the seed while validation could not tell them apart; a mean is steadier.
ORIENTATION_MEMBERS = 3


def _orientation_member(block2: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """One scorer of the 8 copies: the same small network on each copy's stage-2 maps,
    a softmax over the copies."""
    x = conv_bn_relu(block2, 64, name=f"{name}_block")
    x = layers.MaxPooling2D(name=f"{name}_pool")(x)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(64, activation="relu", name=f"{name}_fc")(x)
    x = layers.Dropout(0.2, name=f"{name}_dropout")(x)
    x = layers.Dense(1, name=f"{name}_score")(x)
    x = OrbitSplit(name=f"{name}_split")(x)
    x = layers.Reshape((ORBIT_SIZE,), name=f"{name}_scores")(x)
    return layers.Softmax(dtype="float32", name=f"{name}_softmax")(x)


def build_compact_invariant_64_heads(
    *,
    input_size: int = 256,
    weights_path: Path | None = None,
    with_orientation_entropy: bool = False,
    name: str = "compact_invariant_64_heads",
) -> keras.Model:
    """:func:`build_compact_invariant_64` (the same layers, names and view answer) with two
    more heads, as a model with three named outputs:

    - ``view`` (B, 2): frontal/lateral, exactly invariant, as before;
    - ``orientation`` (B, 8): which of the image's 8 dihedral copies is upright (in
      :class:`~cxr_orient.layers.DihedralOrbit`'s order), the mean of
      :data:`ORIENTATION_MEMBERS` softmaxes over one score per copy. Each copy is scored
      by the same small network on the trunk's stage-2 maps
      (``8 x 8`` at 64 px, so it sees where the anatomy is), so turning or mirroring
      the input permutes the scores exactly: the head is equivariant by construction,
      and it inherits the trunk's insensitivity to greyscale inversion;
    - ``unusual`` (B, 1): a Mahalanobis distance of pooled trunk features from the chest
      films seen in training (:class:`~cxr_orient.layers.MahalanobisScore`, fitted after
      training), invariant like the view.
    """
    inputs = image_input(input_size)
    _, outputs = _headed_outputs(
        inputs, input_size=input_size, with_orientation_entropy=with_orientation_entropy
    )
    model = keras.Model(inputs, outputs, name=name)
    load_full_weights(model, weights_path)
    return model


def _headed_outputs(
    inputs: keras.KerasTensor,
    *,
    input_size: int,
    with_orientation_entropy: bool,
) -> tuple[dict[str, keras.KerasTensor], dict[str, keras.KerasTensor]]:
    """The trunk's tapped tensors and the ``view``, ``orientation`` and ``unusual``
    outputs of :func:`build_compact_invariant_64_heads` (its layers and names)."""
    trunk = invariant_trunk(inputs, width=1.0, pool=4, input_size=input_size)
    view = softmax_head(layers.Dropout(0.3, name="dropout")(trunk["features"]))

    members = [
        _orientation_member(trunk["block2"], f"orient{i}") for i in range(ORIENTATION_MEMBERS)
    ]
    orientation = layers.Average(dtype="float32", name="orientation")(members)

    pooled = [
        OrbitMean(name=f"unusual_mean{i}")(
            layers.GlobalAveragePooling2D(name=f"unusual_gap{i}")(trunk[f"block{i}"])
        )
        for i in (2, 3)
    ]
    x = layers.Concatenate(name="unusual_features")([*pooled, trunk["features"]])
    if with_orientation_entropy:
        distance = MahalanobisScore(
            NUM_CLASSES, UNUSUAL_FEATURE_DIMS, dtype="float32", name="unusual_distance"
        )(x)
        unusual = UnusualScore(dtype="float32", name="unusual")([distance, orientation])
    else:
        unusual = MahalanobisScore(
            NUM_CLASSES, UNUSUAL_FEATURE_DIMS, dtype="float32", name="unusual"
        )(x)
    return trunk, {"view": view, "orientation": orientation, "unusual": unusual}


def build_compact_invariant_64_heads2(
    *, input_size: int = 256, weights_path: Path | None = None
) -> keras.Model:
    """:func:`build_compact_invariant_64_heads` (the same layers, names, view and
    orientation answers) whose ``unusual`` output also asks the orientation head: the
    larger of the feature distance (layer ``unusual_distance``) and the entropy of the
    orientation softmax, each over its validation scale
    (:class:`~cxr_orient.layers.UnusualScore`). A chest film has one upright copy;
    what is not a chest film has none, and the head, trained on chest films only, hedges."""
    return build_compact_invariant_64_heads(
        input_size=input_size,
        weights_path=weights_path,
        with_orientation_entropy=True,
        name="compact_invariant_64_heads2",
    )


#: Features the chest-or-not and PA/AP heads read: the spatial mean and standard
#: deviation of every channel of stages 2, 3 and 4, averaged over the 8 copies.
SCOPE_FEATURE_DIMS = 2 * (64 + 96 + 128)


def build_compact_invariant_64_heads3(
    *, input_size: int = 256, weights_path: Path | None = None
) -> keras.Model:
    """:func:`build_compact_invariant_64_heads2` (the same layers, names and view,
    orientation answers) with two linear heads on :data:`SCOPE_FEATURE_DIMS` invariant
    features (:class:`~cxr_orient.layers.SpatialMeanStd` of stages 2-4, averaged over
    the copies), trained on frozen trunk features:

    - ``not_chest`` (B, 1): the probability that the image is not a chest radiograph
      (trained on chest films against real radiographs of other body parts); its logit
      joins the unusual-image score (:class:`~cxr_orient.layers.ScopeScore`), so
      ``unusual`` (B, 1) passes 1 when the distance, the orientation entropy or this
      head passes its own threshold;
    - ``projection`` (B, 1): p_ap, the probability that a frontal film was taken AP
      (1 - p_ap: PA).

    Every output is invariant to the 8 turns/mirrorings and to inversion (the view's,
    the features' and the orientation entropy's invariance), the orientation
    equivariant, as in ``heads2``.
    """
    inputs = image_input(input_size)
    trunk, outputs = _headed_outputs(inputs, input_size=input_size, with_orientation_entropy=True)
    scope = layers.Concatenate(name="scope_features")(
        [
            OrbitMean(name=f"scope_mean{i}")(
                SpatialMeanStd(name=f"scope_stats{i}")(trunk[f"block{i}"])
            )
            for i in (2, 3, 4)
        ]
    )
    logit = layers.Dense(1, dtype="float32", name="not_chest_logit")(scope)
    not_chest = layers.Activation("sigmoid", dtype="float32", name="not_chest")(logit)
    unusual = ScopeScore(dtype="float32", name="scope_unusual")([outputs["unusual"], logit])
    projection = layers.Dense(1, activation="sigmoid", dtype="float32", name="projection")(scope)
    model = keras.Model(
        inputs,
        {**outputs, "unusual": unusual, "not_chest": not_chest, "projection": projection},
        name="compact_invariant_64_heads3",
    )
    load_full_weights(model, weights_path)
    return model
