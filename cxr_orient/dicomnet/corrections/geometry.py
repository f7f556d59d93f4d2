"""How a film stored turned is put upright: its pixels, and every position or axis its
header names, moved the same way.

The model's answer (``predictions.rotation`` / ``mirrored``, :class:`cxr_orient.answer
.Answer`) says how the film is *stored*: ``stored == numpy.rot90(upright, k)`` with
``rotation == 90 k``, after a left-right mirror of ``upright`` when ``mirrored``
(:data:`cxr_orient.layers.STORED_AS`). Undoing it is ``numpy.rot90(stored, -k)`` (``k``
clockwise quarter turns as displayed, row 0 at the top), then the mirror again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Turn",
    "upright_field_of_view",
    "upright_orientation",
    "upright_pixels",
    "upright_point",
]

_OPPOSITE = str.maketrans("APLRHF", "PARLFH")


@dataclass(frozen=True)
class Turn:
    """How a film is stored relative to standard display (the model's answer): turned by
    ``rotation`` degrees (0, 90, 180, 270; ``numpy.rot90``'s sense), after a left-right
    mirror when ``mirrored``."""

    rotation: int
    mirrored: bool = False

    def __post_init__(self) -> None:
        if self.rotation not in (0, 90, 180, 270):
            raise ValueError(f"rotation must be 0, 90, 180 or 270, not {self.rotation!r}")

    @classmethod
    def from_answer(cls, rotation: int | None, mirrored: bool | None) -> Turn:
        """From a ``predictions`` row (or an ``Answer``): a lateral's ``mirrored`` is
        None (the model leaves its facing open) and counts as not mirrored; a model
        without the orientation head (``rotation`` None) gives nothing to undo."""
        if rotation is None:
            raise ValueError("no rotation in the answer: the model has no orientation head")
        return cls(int(rotation), bool(mirrored))

    @property
    def quarter_turns(self) -> int:
        return self.rotation // 90

    @property
    def swaps_axes(self) -> bool:
        """Whether rows and columns trade places (90 and 270)."""
        return self.quarter_turns % 2 == 1

    @property
    def is_identity(self) -> bool:
        return self.rotation == 0 and not self.mirrored

    def describe(self) -> str:
        """What undoing it does, in words (for Derivation Description)."""
        steps = []
        if self.rotation:
            steps.append(f"rotated {self.rotation} degrees clockwise")
        if self.mirrored:
            steps.append("mirrored left-right")
        return " then ".join(steps) or "unchanged"


def upright_pixels(stored: np.ndarray, turn: Turn) -> np.ndarray:
    """The stored ``(rows, columns)`` pixels turned upright (a contiguous copy, same dtype:
    every pixel kept, none interpolated)."""
    if stored.ndim != 2:
        raise ValueError(f"one greyscale frame expected, got shape {stored.shape}")
    upright = np.rot90(stored, -turn.quarter_turns)
    if turn.mirrored:
        upright = upright[:, ::-1]
    return np.ascontiguousarray(upright)


def upright_point(
    row: float, column: float, rows: int, columns: int, turn: Turn
) -> tuple[float, float]:
    """Where the stored image's pixel ``(row, column)`` (1-based, as DICOM counts them; it
    may lie outside the image) lands in the upright image of a ``rows`` x ``columns``
    stored image."""
    r, c, height, width = row, column, rows, columns
    for _ in range(turn.quarter_turns):
        # One clockwise quarter turn: (r, c) -> (c, height + 1 - r); the image becomes
        # width x height.
        r, c, height, width = c, height + 1 - r, width, height
    if turn.mirrored:
        c = width + 1 - c
    return r, c


def _opposite(direction: str) -> str:
    return direction.translate(_OPPOSITE)


def upright_orientation(stored: Sequence[str], turn: Turn) -> tuple[str, str]:
    """Patient Orientation (row direction, column direction; PS3.3 C.7.6.1.1.1) of the
    upright image, given the stored image's."""
    row_dir, column_dir = stored[0], stored[1]
    for _ in range(turn.quarter_turns):
        # After a clockwise quarter turn, going right is going up the old columns and
        # going down is going right along the old rows.
        row_dir, column_dir = _opposite(column_dir), row_dir
    if turn.mirrored:
        row_dir = _opposite(row_dir)
    return row_dir, column_dir


def upright_field_of_view(rotation: int, horizontal_flip: bool, turn: Turn) -> tuple[int, bool]:
    """DX Detector's Field of View Rotation (clockwise degrees) and Horizontal Flip
    (applied after the rotation), PS3.3 C.8.11.4, of the upright image: the stored image
    is ``flip(rotate_cw(detector, rotation))``; the upright one is that turned by
    ``turn``'s undoing."""
    # Undoing the turn is rotate_cw(90 k) then a flip when mirrored. A rotation moved past
    # a flip changes sense: rotate_cw(a) o flip == flip o rotate_cw(-a).
    turned = -turn.rotation if horizontal_flip else turn.rotation
    return (rotation + turned) % 360, horizontal_flip != turn.mirrored
