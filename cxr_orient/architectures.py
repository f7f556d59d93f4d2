"""Registry of the CNN architectures that classify a radiograph as frontal or lateral.

Every model takes ``(input_size, input_size, 3)`` float32 images holding uint8 values
(0..255; a greyscale radiograph repeated over the three channels) and does its own
preprocessing inside the graph, so a saved ``.keras`` file is all that inference needs.
Every model ends in ``Dense(2, softmax)``: index 0 frontal, index 1 lateral
(:data:`cxr_orient.LABELS`).

Besides built-in Keras layers, only the registered layers of :mod:`cxr_orient.layers`
are used, so checkpoints round-trip through ``.keras`` with ``safe_mode=True`` on any
Keras 3 backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import keras
from keras import layers

from cxr_orient.errors import ModelError
from cxr_orient.layers import (
    ORBIT_SIZE,
    Abs,
    DihedralOrbit,
    MahalanobisScore,
    OrbitMean,
    OrbitSplit,
    ScopeScore,
    SpatialMeanStd,
    UnusualScore,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ARCHITECTURE",
    "HEADED_ARCHITECTURES",
    "INVARIANT_ARCHITECTURES",
    "build_compact",
    "build_compact_invariant",
    "build_compact_invariant_64",
    "build_compact_invariant_64_heads",
    "build_compact_invariant_64_heads2",
    "build_compact_invariant_64_heads3",
    "build_compact_invariant_slim",
    "build_compact_wide",
    "build_mobilenetv3small",
    "build_model",
    "build_tutorial2019",
    "build_vgg16",
]

DEFAULT_ARCHITECTURE = "compact_invariant_64"
NUM_CLASSES = 2

#: ImageNet channel means of the "caffe" preprocessing VGG16 was trained with (BGR order).
#: Our inputs are grey repeated over three channels, so the RGB->BGR swap of
#: ``keras.applications.vgg16.preprocess_input`` is a no-op and is left out.
_VGG16_BGR_MEANS = (103.939, 116.779, 123.68)


def _image_input(input_size: int) -> keras.KerasTensor:
    if input_size < 32:
        raise ValueError(f"input_size must be at least 32, got {input_size}")
    return keras.Input(shape=(input_size, input_size, 3), dtype="float32", name="image")


def _softmax_head(x: keras.KerasTensor) -> keras.KerasTensor:
    # float32 output even under a mixed-precision policy, for stable probabilities.
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="view")(x)


def build_tutorial2019(*, input_size: int = 256, weights_path: Path | None = None) -> keras.Model:
    """The 2019 tutorial's network, layer for layer (~130 M parameters at 256 px).

    Kept as a baseline: its Flatten -> Dense(256) is most of the parameters and
    makes it slow on CPU and sensitive to where anatomy sits in the frame.
    """
    inputs = _image_input(input_size)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.Conv2D(64, 2, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Dropout(0.3, name="drop1")(x)
    x = layers.Conv2D(128, 2, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Dropout(0.3, name="drop2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, activation="relu", name="fc")(x)
    model = keras.Model(inputs, _softmax_head(x), name="tutorial2019")
    # As in the tutorial: Adam with binary cross-entropy on one-hot labels.
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    _load_full_weights(model, weights_path)
    return model


def _conv_bn_relu(
    x: keras.KerasTensor, filters: int, *, strides: int = 1, name: str
) -> keras.KerasTensor:
    x = layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    # momentum 0.9: with a few hundred training images an epoch is ~15 steps, and the
    # default 0.99 leaves the moving statistics (used at validation) far behind.
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_compact(
    *, input_size: int = 256, weights_path: Path | None = None, width: float = 1.0,
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

    inputs = _image_input(input_size)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = _conv_bn_relu(x, ch(16), strides=2, name="stem")  # /2
    for i, filters in enumerate((32, 64, 96, 128), start=1):
        x = _conv_bn_relu(x, ch(filters), name=f"block{i}a")
        if i >= 3:
            x = _conv_bn_relu(x, ch(filters), name=f"block{i}b")
        x = layers.MaxPooling2D(name=f"block{i}_pool")(x)  # /4, /8, /16, /32
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    model = keras.Model(inputs, _softmax_head(x), name=name)
    _load_full_weights(model, weights_path)
    return model


def build_compact_invariant(
    *, input_size: int = 256, weights_path: Path | None = None, width: float = 1.0,
    pool: int = 2, name: str = "compact_invariant",
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
    inputs = _image_input(input_size)
    trunk = _invariant_trunk(inputs, width=width, pool=pool, input_size=input_size)
    x = layers.Dropout(0.3, name="dropout")(trunk["features"])
    model = keras.Model(inputs, _softmax_head(x), name=name)
    _load_full_weights(model, weights_path)
    return model


def _invariant_trunk(
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
            f"input_size {input_size} must be a multiple of {pool} and at least {32 * pool}")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="centre")(inputs)
    if pool > 1:
        x = layers.AveragePooling2D(pool, name="downsample")(x)
    x = DihedralOrbit(name="orbit")(x)
    x = layers.Conv2D(ch(16), 3, strides=2, padding="same", use_bias=False,
                      name="stem_conv")(x)
    x = Abs(name="stem_abs")(x)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    tapped: dict[str, keras.KerasTensor] = {}
    for i, filters in enumerate((32, 64, 96, 128), start=1):
        x = _conv_bn_relu(x, ch(filters), name=f"block{i}a")
        if i >= 3:
            x = _conv_bn_relu(x, ch(filters), name=f"block{i}b")
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
    return build_compact_invariant(input_size=input_size, weights_path=weights_path, pool=4,
                                   name="compact_invariant_64")


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
    x = _conv_bn_relu(block2, 64, name=f"{name}_block")
    x = layers.MaxPooling2D(name=f"{name}_pool")(x)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(64, activation="relu", name=f"{name}_fc")(x)
    x = layers.Dropout(0.2, name=f"{name}_dropout")(x)
    x = layers.Dense(1, name=f"{name}_score")(x)
    x = OrbitSplit(name=f"{name}_split")(x)
    x = layers.Reshape((ORBIT_SIZE,), name=f"{name}_scores")(x)
    return layers.Softmax(dtype="float32", name=f"{name}_softmax")(x)


def build_compact_invariant_64_heads(
    *, input_size: int = 256, weights_path: Path | None = None,
    with_orientation_entropy: bool = False, name: str = "compact_invariant_64_heads",
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
    inputs = _image_input(input_size)
    _, outputs = _headed_outputs(inputs, input_size=input_size,
                                 with_orientation_entropy=with_orientation_entropy)
    model = keras.Model(inputs, outputs, name=name)
    _load_full_weights(model, weights_path)
    return model


def _headed_outputs(
    inputs: keras.KerasTensor, *, input_size: int, with_orientation_entropy: bool,
) -> tuple[dict[str, keras.KerasTensor], dict[str, keras.KerasTensor]]:
    """The trunk's tapped tensors and the ``view``, ``orientation`` and ``unusual``
    outputs of :func:`build_compact_invariant_64_heads` (its layers and names)."""
    trunk = _invariant_trunk(inputs, width=1.0, pool=4, input_size=input_size)
    view = _softmax_head(layers.Dropout(0.3, name="dropout")(trunk["features"]))

    members = [_orientation_member(trunk["block2"], f"orient{i}")
               for i in range(ORIENTATION_MEMBERS)]
    orientation = layers.Average(dtype="float32", name="orientation")(members)

    pooled = [
        OrbitMean(name=f"unusual_mean{i}")(
            layers.GlobalAveragePooling2D(name=f"unusual_gap{i}")(trunk[f"block{i}"]))
        for i in (2, 3)
    ]
    x = layers.Concatenate(name="unusual_features")([*pooled, trunk["features"]])
    if with_orientation_entropy:
        distance = MahalanobisScore(NUM_CLASSES, UNUSUAL_FEATURE_DIMS, dtype="float32",
                                    name="unusual_distance")(x)
        unusual = UnusualScore(dtype="float32", name="unusual")([distance, orientation])
    else:
        unusual = MahalanobisScore(NUM_CLASSES, UNUSUAL_FEATURE_DIMS, dtype="float32",
                                   name="unusual")(x)
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
        input_size=input_size, weights_path=weights_path, with_orientation_entropy=True,
        name="compact_invariant_64_heads2")


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
    inputs = _image_input(input_size)
    trunk, outputs = _headed_outputs(inputs, input_size=input_size,
                                     with_orientation_entropy=True)
    scope = layers.Concatenate(name="scope_features")([
        OrbitMean(name=f"scope_mean{i}")(SpatialMeanStd(name=f"scope_stats{i}")(
            trunk[f"block{i}"]))
        for i in (2, 3, 4)
    ])
    logit = layers.Dense(1, dtype="float32", name="not_chest_logit")(scope)
    not_chest = layers.Activation("sigmoid", dtype="float32", name="not_chest")(logit)
    unusual = ScopeScore(dtype="float32", name="scope_unusual")([outputs["unusual"], logit])
    projection = layers.Dense(1, activation="sigmoid", dtype="float32",
                              name="projection")(scope)
    model = keras.Model(inputs, {**outputs, "unusual": unusual, "not_chest": not_chest,
                                 "projection": projection},
                        name="compact_invariant_64_heads3")
    _load_full_weights(model, weights_path)
    return model


def build_compact_invariant_slim(
    *, input_size: int = 256, weights_path: Path | None = None
) -> keras.Model:
    """:func:`build_compact_invariant` with half the channels (8..64), ~0.11 M params (a
    candidate beside ``compact_invariant_64`` when the shipped model was chosen)."""
    return build_compact_invariant(input_size=input_size, weights_path=weights_path,
                                   width=0.5, name="compact_invariant_slim")


def build_compact_wide(
    *, input_size: int = 256, weights_path: Path | None = None
) -> keras.Model:
    """:func:`build_compact` with 1.25x the channels (20..160), ~0.66 M params, ~1.5x the
    CPU cost of ``compact``."""
    return build_compact(input_size=input_size, weights_path=weights_path, width=1.25,
                         name="compact_wide")


def build_vgg16(*, input_size: int = 256, weights_path: Path | None = None) -> keras.Model:
    """VGG16 body (``keras.applications``), "caffe" preprocessing inside the model.

    ``weights_path`` is a local ImageNet no-top weights file
    (``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``); nothing is downloaded.
    """
    inputs = _image_input(input_size)
    x = layers.Rescaling(
        1.0, offset=[-m for m in _VGG16_BGR_MEANS], name="caffe_preprocess"
    )(inputs)
    base = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(input_size, input_size, 3)
    )
    _load_backbone_weights(base, weights_path)
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    return keras.Model(inputs, _softmax_head(x), name="vgg16")


def build_mobilenetv3small(
    *, input_size: int = 256, weights_path: Path | None = None
) -> keras.Model:
    """MobileNetV3Small body; its own preprocessing (0..255 -> -1..1) is inside the model.

    ``weights_path`` is a local ImageNet no-top weights file; nothing is downloaded.
    """
    inputs = _image_input(input_size)
    base = keras.applications.MobileNetV3Small(
        input_shape=(input_size, input_size, 3),
        include_top=False,
        weights=None,
        include_preprocessing=True,
    )
    _load_backbone_weights(base, weights_path)
    x = base(inputs)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    return keras.Model(inputs, _softmax_head(x), name="mobilenetv3small")


#: The file names keras.applications gives its ImageNet no-top weights; an operator
#: copies them into CXR_IMAGENET_WEIGHTS_DIR (nothing is downloaded at run time).
IMAGENET_WEIGHT_FILES = {
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "mobilenetv3small": "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
}


def imagenet_weights_for(name: str, directory: Path | None) -> Path | None:
    """The local ImageNet weights file for architecture ``name`` in ``directory``, if
    the architecture has a pretrained backbone and the file is there."""
    file_name = IMAGENET_WEIGHT_FILES.get(name)
    if directory is None or file_name is None:
        return None
    path = Path(directory) / file_name
    if not path.is_file():
        logger.warning("%s: %s not in CXR_IMAGENET_WEIGHTS_DIR (%s)", name, file_name,
                       directory)
        return None
    return path


def _load_backbone_weights(base: keras.Model, weights_path: Path | None) -> None:
    if weights_path is None:
        logger.warning(
            "%s: no ImageNet weights file given, training from scratch", base.name
        )
        return
    path = Path(weights_path)
    if not path.is_file():
        raise ModelError(f"ImageNet weights file not found: {path}")
    try:
        base.load_weights(str(path))
    except (ValueError, OSError) as e:
        raise ModelError(f"cannot load ImageNet no-top weights from {path}: {e}") from e
    logger.info("%s: ImageNet weights loaded from %s", base.name, path)


def _load_full_weights(model: keras.Model, weights_path: Path | None) -> None:
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


ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "tutorial2019": build_tutorial2019,
    "compact": build_compact,
    "compact_wide": build_compact_wide,
    "compact_invariant": build_compact_invariant,
    "compact_invariant_slim": build_compact_invariant_slim,
    "compact_invariant_64": build_compact_invariant_64,
    "compact_invariant_64_heads": build_compact_invariant_64_heads,
    "compact_invariant_64_heads2": build_compact_invariant_64_heads2,
    "compact_invariant_64_heads3": build_compact_invariant_64_heads3,
    "vgg16": build_vgg16,
    "mobilenetv3small": build_mobilenetv3small,
}


#: Architectures whose answer cannot change under the 16 dihedral x inversion views (by
#: construction, see :func:`build_compact_invariant`): validating them on all 16 views
#: would only repeat the same figures 16 times.
INVARIANT_ARCHITECTURES = frozenset(
    {"compact_invariant", "compact_invariant_slim", "compact_invariant_64",
     "compact_invariant_64_heads", "compact_invariant_64_heads2",
     "compact_invariant_64_heads3"})

#: Architectures with the orientation and unusual-image heads (three named outputs).
HEADED_ARCHITECTURES = frozenset({"compact_invariant_64_heads", "compact_invariant_64_heads2",
                                  "compact_invariant_64_heads3"})


def build_model(
    name: str = DEFAULT_ARCHITECTURE,
    *,
    input_size: int = 256,
    weights_path: Path | None = None,
) -> keras.Model:
    """Build the architecture registered under ``name`` (see :data:`ARCHITECTURES`)."""
    try:
        builder = ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ModelError(f"unknown architecture {name!r}; known: {known}") from None
    return builder(input_size=input_size, weights_path=weights_path)
