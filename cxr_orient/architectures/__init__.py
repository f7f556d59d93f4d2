"""Registry of the CNN architectures that classify a radiograph as frontal or lateral.

Every model takes ``(input_size, input_size, 3)`` float32 images holding uint8 values
(0..255; a greyscale radiograph repeated over the three channels) and does its own
preprocessing inside the graph, so a saved ``.keras`` file is all that inference needs.
Every model ends in ``Dense(2, softmax)``: index 0 frontal, index 1 lateral
(:data:`cxr_orient.LABELS`).

Besides built-in Keras layers, only the registered layers of :mod:`cxr_orient.layers`
are used, so checkpoints round-trip through ``.keras`` with ``safe_mode=True`` on any
Keras 3 backend.

One module per family, each holding the builders of its networks: :mod:`.baseline`
(the 2019 tutorial's), :mod:`.compact`, :mod:`.invariant` (the exactly invariant
trunk; the shipped view network), :mod:`.heads` (that network with the orientation,
unusual-image, chest-or-not and PA/AP heads: the shipped checkpoints) and
:mod:`.transfer` (ImageNet bodies); :mod:`.blocks` what they share. Every name here is
a shipped checkpoint's architecture (rebuilt by name, e.g. under mixed precision by
:func:`cxr_orient.modelstore.with_mixed_bfloat16`) or a choice of ``cxr-orient train
--architecture``; how each shipped checkpoint was made is in ``recipes/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras

from cxr_orient.architectures.baseline import build_tutorial2019
from cxr_orient.architectures.compact import build_compact, build_compact_wide
from cxr_orient.architectures.heads import (
    ORIENTATION_MEMBERS,
    SCOPE_FEATURE_DIMS,
    UNUSUAL_FEATURE_DIMS,
    build_compact_invariant_64_heads,
    build_compact_invariant_64_heads2,
    build_compact_invariant_64_heads3,
)
from cxr_orient.architectures.invariant import (
    build_compact_invariant,
    build_compact_invariant_64,
    build_compact_invariant_slim,
)
from cxr_orient.architectures.transfer import (
    IMAGENET_WEIGHT_FILES,
    build_mobilenetv3small,
    build_vgg16,
    imagenet_weights_for,
)
from cxr_orient.errors import ModelError

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ARCHITECTURE",
    "HEADED_ARCHITECTURES",
    "IMAGENET_WEIGHT_FILES",
    "INVARIANT_ARCHITECTURES",
    "ORIENTATION_MEMBERS",
    "SCOPE_FEATURE_DIMS",
    "UNUSUAL_FEATURE_DIMS",
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
    "imagenet_weights_for",
]

DEFAULT_ARCHITECTURE = "compact_invariant_64"

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
    {
        "compact_invariant",
        "compact_invariant_slim",
        "compact_invariant_64",
        "compact_invariant_64_heads",
        "compact_invariant_64_heads2",
        "compact_invariant_64_heads3",
    }
)

#: Architectures with the orientation and unusual-image heads (three named outputs).
HEADED_ARCHITECTURES = frozenset(
    {"compact_invariant_64_heads", "compact_invariant_64_heads2", "compact_invariant_64_heads3"}
)


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
