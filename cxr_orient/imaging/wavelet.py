"""JPEG 2000 wavelet maths: resampling a decoded low-pass band to the reference's bins.

A JPEG 2000 image decoded at reduced resolution is its wavelet low-pass band ``levels``
below full size. :func:`wavelet_box_matrix` takes such a band, along one axis, to the
means of the bins of Pillow's BOX resize of the full-resolution image (what
:func:`cxr_orient.imaging.load_dicom_image_naive` computes), by the band's own inverse
transform with all detail bands zero (ITU-T T.800 Annex F).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt

from cxr_orient.imaging.processing import box_starts

__all__ = ["Wavelet", "synthesise_low", "wavelet_box_matrix"]

Wavelet = Literal["5-3", "9-7"]
"""The reversible (5-3) or irreversible (9-7) JPEG 2000 wavelet."""

#: JPEG 2000 9-7 lifting constants (ITU-T T.800 Annex F): alpha, beta, gamma, and K.
_ALPHA_97, _BETA_97, _GAMMA_97 = -1.586134342059924, -0.052980118572961, 0.882911075530934
_K_97 = 1.230174104914001


@lru_cache(maxsize=64)
def wavelet_box_matrix(
    length: int, size: int, levels: int, wavelet: Wavelet
) -> npt.NDArray[np.float32]:
    """``(size, n)`` matrix taking a J2K low-pass band of ``n`` samples (``levels``
    below a side of ``length``) to the means of Pillow's BOX bins over the full side.

    The band is synthesised back to ``length`` samples with all detail bands zero
    (the decoder's own inverse transform, whole-sample symmetric extension, band
    sample ``k`` at full-resolution sample ``2**levels * k``), then averaged over
    each bin of :func:`~cxr_orient.imaging.processing.box_starts`. Resampling the band
    as if it were already a box mean moves every sample by up to half an output pixel
    and keeps the 9-7 band's sharper spectrum: answers moved by 0.01 where this moves
    them by 0.001.
    """
    lengths = [length]
    for _ in range(levels):
        lengths.append(-(-lengths[-1] // 2))
    synthesis = np.eye(lengths[-1], dtype=np.float64)
    for level in range(levels, 0, -1):
        synthesis = synthesise_low(synthesis, lengths[level - 1], wavelet)
    starts = box_starts(length, size)
    counts = np.diff(np.append(starts, length))
    matrix = np.add.reduceat(synthesis, starts, axis=0) / counts[:, np.newaxis]
    result = matrix.astype(np.float32)
    result.flags.writeable = False
    return result


def synthesise_low(low: np.ndarray, length: int, wavelet: Wavelet) -> np.ndarray:
    """One level of 1-D J2K inverse DWT along axis 0 with a zero high-pass band."""
    n_even, n_odd = (length + 1) // 2, length // 2
    if low.shape[0] != n_even:
        raise ValueError(f"low-pass band of {low.shape[0]} samples cannot make {length}")

    def right(even: np.ndarray) -> np.ndarray:  # even[n + 1] for each odd n, mirrored
        return even[1 : n_odd + 1] if n_even > n_odd else np.concatenate([even[1:], even[-1:]])

    if wavelet == "5-3":
        even = low
        odd = (low[:n_odd] + right(low)) / 2
    else:
        even = low * _K_97
        odd = -_GAMMA_97 * (even[:n_odd] + right(even))
        left = np.concatenate([odd[:1], odd[: n_even - 1]])  # odd[n - 1], mirrored
        ahead = odd if n_even == n_odd else np.concatenate([odd, odd[-1:]])
        even = even - _BETA_97 * (left + ahead)
        odd = odd - _ALPHA_97 * (even[:n_odd] + right(even))
    out = np.empty((length, *low.shape[1:]), dtype=low.dtype)
    out[0::2] = even
    out[1::2] = odd
    return out
