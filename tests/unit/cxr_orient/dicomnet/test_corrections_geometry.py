"""The geometry of putting a film upright, checked against numpy storing it the way the
model's answer says (db/models.py: ``numpy.rot90(upright, k)`` after a left-right mirror)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_orient.dicomnet.corrections import (
    Turn,
    upright_field_of_view,
    upright_orientation,
    upright_pixels,
    upright_point,
)
from tests.utils.corrections import stored_as, stored_orientation

POSES = [(r, m) for r in (0, 90, 180, 270) for m in (False, True)]
IDS = [f"{r}{'-mirrored' if m else ''}" for r, m in POSES]


@pytest.mark.parametrize(("rotation", "mirrored"), POSES, ids=IDS)
def test_upright_pixels_undo_the_stored_pose(rotation: int, mirrored: bool) -> None:
    upright = np.arange(5 * 7, dtype=np.uint16).reshape(5, 7)  # not square
    stored = stored_as(upright, rotation, mirrored)
    turned = upright_pixels(stored, Turn(rotation, mirrored))
    assert turned.dtype == upright.dtype and turned.flags.c_contiguous
    assert np.array_equal(turned, upright)


@pytest.mark.parametrize(("rotation", "mirrored"), POSES, ids=IDS)
def test_a_pixel_position_moves_with_the_pixels(rotation: int, mirrored: bool) -> None:
    upright = np.zeros((5, 7), np.uint8)
    upright[1, 5] = 1  # 1-based (2, 6)
    stored = stored_as(upright, rotation, mirrored)
    (row,), (column,) = np.nonzero(stored)
    moved = upright_point(
        float(row + 1),
        float(column + 1),
        stored.shape[0],
        stored.shape[1],
        Turn(rotation, mirrored),
    )
    assert moved == (2, 6)


@pytest.mark.parametrize(("rotation", "mirrored"), POSES, ids=IDS)
@pytest.mark.parametrize(
    "upright",
    [["L", "F"], ["A", "F"], ["P", "F"]],
    ids=["frontal", "lateral-facing-right", "lateral-facing-left"],
)
def test_patient_orientation_moves_with_the_pixels(
    upright: list[str], rotation: int, mirrored: bool
) -> None:
    stored = stored_orientation(upright, rotation, mirrored)
    assert list(upright_orientation(stored, Turn(rotation, mirrored))) == upright


def test_an_oblique_direction_turns_letter_by_letter() -> None:
    assert upright_orientation(["RF", "P"], Turn(180)) == ("LH", "A")
    assert upright_orientation(["RF", "P"], Turn(0, mirrored=True)) == ("LH", "P")


@pytest.mark.parametrize(("rotation", "mirrored"), POSES, ids=IDS)
@pytest.mark.parametrize("fov_rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("fov_flip", [False, True], ids=["no-flip", "flip"])
def test_field_of_view_rotation_and_flip_follow(
    rotation: int, mirrored: bool, fov_rotation: int, fov_flip: bool
) -> None:
    """PS3.3 C.8.11.4: the image is the detector turned clockwise by Field of View
    Rotation, then flipped when Field of View Horizontal Flip is YES."""
    detector = np.arange(4 * 6).reshape(4, 6)

    def image_of(angle: int, flip: bool) -> np.ndarray:
        image = np.rot90(detector, -(angle // 90))
        return image[:, ::-1] if flip else image

    turn = Turn(rotation, mirrored)
    new_rotation, new_flip = upright_field_of_view(fov_rotation, fov_flip, turn)
    assert np.array_equal(
        upright_pixels(image_of(fov_rotation, fov_flip), turn), image_of(new_rotation, new_flip)
    )


def test_turn_refuses_other_angles() -> None:
    with pytest.raises(ValueError, match="rotation must be"):
        Turn(45)
    assert Turn(90, True).describe() == "rotated 90 degrees clockwise then mirrored left-right"
    assert Turn(0).is_identity and Turn(270).swaps_axes and not Turn(180).swaps_axes


def test_turn_from_an_answer() -> None:
    assert Turn.from_answer(270, None) == Turn(270, False)  # a lateral
    assert Turn.from_answer(90, True) == Turn(90, True)
    with pytest.raises(ValueError, match="no orientation head"):
        Turn.from_answer(None, None)
