"""The header's positions and axes moved with the pixels: the pixel spacings and aspect
ratio (their two values trade places on 90 and 270), the collimator and display shutter
(edges, centres, polygon vertices, in pixels of the image), the DX detector's field of
view rotation and flip; and what was drawn on the stored geometry dropped (overlays, a
bitmap shutter drawn in one, the icon image)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from pydicom.dataset import Dataset

from cxr_orient.dicomnet.corrections.geometry import (
    Turn,
    upright_field_of_view,
    upright_point,
)
from cxr_orient.imaging.attributes import is_multi

__all__ = ["drop_old_drawings", "move_positions", "values_of"]

#: (row spacing, column spacing) pairs that trade places when rows and columns do.
_SPACINGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
#: (left, right, upper, lower) edge keywords of each rectangle.
_RECTANGLES = (
    (
        "CollimatorLeftVerticalEdge",
        "CollimatorRightVerticalEdge",
        "CollimatorUpperHorizontalEdge",
        "CollimatorLowerHorizontalEdge",
    ),
    (
        "ShutterLeftVerticalEdge",
        "ShutterRightVerticalEdge",
        "ShutterUpperHorizontalEdge",
        "ShutterLowerHorizontalEdge",
    ),
)
#: row\column points, and lists of them.
_POINTS = ("CenterOfCircularCollimator", "CenterOfCircularShutter")
_POLYGONS = ("VerticesOfThePolygonalCollimator", "VerticesOfThePolygonalShutter")


def move_positions(ds: Dataset, turn: Turn, rows: int, columns: int) -> None:
    """Move ``ds``'s positions and axes as the pixels of a ``rows`` x ``columns`` stored
    image move under ``turn``'s undoing (in place)."""
    if turn.swaps_axes:
        for keyword in (*_SPACINGS, "PixelAspectRatio"):
            if keyword in ds and ds[keyword].VM == 2:
                ds[keyword].value = list(reversed(list(ds[keyword].value)))
    for left, right, upper, lower in _RECTANGLES:
        if not all(k in ds and ds[k].value is not None for k in (left, right, upper, lower)):
            continue
        corners = [
            upright_point(float(r), float(c), rows, columns, turn)
            for r in (ds[upper].value, ds[lower].value)
            for c in (ds[left].value, ds[right].value)
        ]
        new_rows = [p[0] for p in corners]
        new_columns = [p[1] for p in corners]
        ds[left].value, ds[right].value = int(min(new_columns)), int(max(new_columns))
        ds[upper].value, ds[lower].value = int(min(new_rows)), int(max(new_rows))
    for keyword in (*_POINTS, *_POLYGONS):
        if keyword not in ds or not ds[keyword].value:
            continue
        values = [int(v) for v in ds[keyword].value]
        moved: list[int] = []
        for r, c in zip(values[0::2], values[1::2], strict=True):
            new_r, new_c = upright_point(r, c, rows, columns, turn)
            moved += [int(new_r), int(new_c)]
        ds[keyword].value = moved
    if "FieldOfViewRotation" in ds and ds.FieldOfViewRotation not in (None, ""):
        flip = str(ds.get("FieldOfViewHorizontalFlip", "NO")).upper() == "YES"
        rotation, flip = upright_field_of_view(int(float(ds.FieldOfViewRotation)), flip, turn)
        ds.FieldOfViewRotation = str(rotation)
        ds.FieldOfViewHorizontalFlip = "YES" if flip else "NO"


def drop_old_drawings(ds: Dataset) -> None:
    """Overlays (60xx), a bitmap display shutter drawn in one, and the icon image were
    drawn on the stored geometry."""
    overlays = [e.tag for e in ds if 0x6000 <= e.tag.group <= 0x601E and e.tag.group % 2 == 0]
    for tag in overlays:
        del ds[tag]
    if "IconImageSequence" in ds:
        del ds.IconImageSequence
    shapes = [str(v) for v in values_of(ds.get("ShutterShape"))]
    if "BITMAP" in shapes:
        for keyword in (
            "ShutterOverlayGroup",
            "ShutterPresentationValue",
            "ShutterPresentationColorCIELabValue",
        ):
            if keyword in ds:
                delattr(ds, keyword)
        kept = [v for v in shapes if v != "BITMAP"]
        if kept:
            ds.ShutterShape = kept
        else:
            del ds.ShutterShape


def values_of(value: object) -> list[object]:
    """An attribute's values as a list: pydicom gives one value bare and several as a
    MultiValue (a single "ORIGINAL" must not become its letters)."""
    if value is None or value == "":
        return []
    return list(cast("Iterable[object]", value)) if is_multi(value) else [value]
