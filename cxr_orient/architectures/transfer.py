"""Transfer learning from local ImageNet weights: VGG16 and MobileNetV3Small bodies
(nothing is downloaded)."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
from keras import layers

from cxr_orient.architectures.blocks import image_input, softmax_head
from cxr_orient.errors import ModelError

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_WEIGHT_FILES",
    "build_mobilenetv3small",
    "build_vgg16",
    "imagenet_weights_for",
]

#: ImageNet channel means of the "caffe" preprocessing VGG16 was trained with (BGR order).
#: Our inputs are grey repeated over three channels, so the RGB->BGR swap of
#: ``keras.applications.vgg16.preprocess_input`` is a no-op and is left out.
_VGG16_BGR_MEANS = (103.939, 116.779, 123.68)


def build_vgg16(*, input_size: int = 256, weights_path: Path | None = None) -> keras.Model:
    """VGG16 body (``keras.applications``), "caffe" preprocessing inside the model.

    ``weights_path`` is a local ImageNet no-top weights file
    (``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``); nothing is downloaded.
    """
    inputs = image_input(input_size)
    x = layers.Rescaling(1.0, offset=[-m for m in _VGG16_BGR_MEANS], name="caffe_preprocess")(
        inputs
    )
    base = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(input_size, input_size, 3)
    )
    _load_backbone_weights(base, weights_path)
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    return keras.Model(inputs, softmax_head(x), name="vgg16")


def build_mobilenetv3small(
    *, input_size: int = 256, weights_path: Path | None = None
) -> keras.Model:
    """MobileNetV3Small body; its own preprocessing (0..255 -> -1..1) is inside the model.

    ``weights_path`` is a local ImageNet no-top weights file; nothing is downloaded.
    """
    inputs = image_input(input_size)
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
    return keras.Model(inputs, softmax_head(x), name="mobilenetv3small")


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
        logger.warning("%s: %s not in CXR_IMAGENET_WEIGHTS_DIR (%s)", name, file_name, directory)
        return None
    return path


def _load_backbone_weights(base: keras.Model, weights_path: Path | None) -> None:
    if weights_path is None:
        logger.warning("%s: no ImageNet weights file given, training from scratch", base.name)
        return
    path = Path(weights_path)
    if not path.is_file():
        raise ModelError(f"ImageNet weights file not found: {path}")
    try:
        base.load_weights(str(path))
    except (ValueError, OSError) as e:
        raise ModelError(f"cannot load ImageNet no-top weights from {path}: {e}") from e
    logger.info("%s: ImageNet weights loaded from %s", base.name, path)
