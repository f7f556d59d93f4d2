"""The card's pixel steps, written once for any NumPy-like array module ``xp``.

Stored values (full size, integers) -> clip (precision, linear window) -> area mean to
``size x size`` as two matrix products with the BOX bins of
:func:`~cxr_orient.imaging.processing.box_starts` -> rescale -> window ->
MONOCHROME1 inversion: the steps of :func:`cxr_orient.imaging.stored_to_image` on the
integer path, in the same order. With ``xp = cupy`` the full-size values never leave
the card; the tests run the same code with ``xp = numpy``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from cxr_orient.imaging.gpu.plan import CardJob
from cxr_orient.imaging.processing import box_starts

__all__ = ["box_matrix", "reduce_stored"]


def box_matrix(length: int, size: int) -> npt.NDArray[np.float32]:
    """``(size, length)`` weights whose product with a column averages Pillow's BOX bins."""
    starts = box_starts(length, size)
    ends = np.append(starts[1:], length)
    matrix = np.zeros((size, length), dtype=np.float32)
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def reduce_stored(
    xp: ModuleType, stored: Any, job: CardJob, rows_matrix: Any, columns_matrix: Any
) -> Any:
    """``size x size`` float32 values (an ``xp`` array) ready for normalisation.

    ``stored`` is the decoded first frame, ``(rows, columns)`` or ``(rows, columns, 1)``
    integers; ``rows_matrix`` and ``columns_matrix`` are :func:`box_matrix` of the two
    sides, as ``xp`` arrays.
    """
    values = stored[..., 0] if stored.ndim == 3 else stored
    if values.shape != (job.rows, job.columns):
        raise ValueError(
            f"decoded shape {tuple(values.shape)} != Rows x Columns {(job.rows, job.columns)}"
        )
    if job.mask is not None:
        values = values & values.dtype.type(job.mask)
    if job.clip_max is not None:
        values = xp.minimum(values, values.dtype.type(job.clip_max))
    if job.window_bounds is not None:
        low, high = job.window_bounds
        values = xp.clip(values, values.dtype.type(low), values.dtype.type(high))
    small = rows_matrix @ (values.astype(xp.float32) @ columns_matrix.T)
    if job.slope != 1.0 or job.intercept != 0.0:
        small = small * xp.float32(job.slope) + xp.float32(job.intercept)
    window = job.window
    if window is not None:
        center, width = xp.float32(window.center), xp.float32(window.width)
        if window.function == "SIGMOID":
            small = 1.0 / (1.0 + xp.exp(xp.float32(-4.0) * (small - center) / width))
        elif window.function == "LINEAR_EXACT":
            small = xp.clip((small - center) / width + xp.float32(0.5), 0.0, 1.0)
        else:
            denominator = xp.float32(max(float(width) - 1.0, 1e-3))
            small = xp.clip(
                (small - (center - xp.float32(0.5))) / denominator + xp.float32(0.5), 0.0, 1.0
            )
        small = small.astype(xp.float32)
    if job.monochrome1:
        small = -small
    return small
