"""Decode chest radiographs and turn them into model input.

One package for training and inference, so both see the same pixels.

Accepted images
---------------
* PNG and JPEG files (by suffix ``.png``, ``.jpg``, ``.jpeg``), read with Pillow;
  colour is converted to grey (``L``), EXIF orientation is applied.
* DICOM: single-frame greyscale radiographs only:

  - *SamplesPerPixel* 1 (assumed when absent), *PhotometricInterpretation*
    ``MONOCHROME1`` or ``MONOCHROME2``, *NumberOfFrames* absent or 1;
  - *BitsAllocated* 8 or 16; *BitsStored* 2..16 and <= *BitsAllocated*
    (1-bit images refused); *PixelRepresentation* 0 or 1 (0 when absent);
  - *Rows* and *Columns* present, positive, each <= 65535, and
    ``Rows * Columns <= max_pixels``; checked before anything is decoded;
  - *PixelData* present; for native (uncompressed) syntaxes its length must hold
    ``Rows * Columns * BitsAllocated / 8`` bytes;
  - transfer syntaxes: implicit/explicit VR little endian, deflated, explicit
    VR big endian, RLE lossless, JPEG baseline (8-bit) and extended (12-bit),
    JPEG lossless (process 14 and SV1), JPEG-LS lossless and near-lossless,
    JPEG 2000 lossless and lossy, HTJ2K (High-Throughput JPEG 2000) lossless,
    lossless RPCL and lossy. Anything else is refused, naming the UID.

Pixel pipeline (DICOM)
----------------------
1. Modality LUT: *RescaleSlope*/*RescaleIntercept*, or *ModalityLUTSequence*.
2. VOI: the first *WindowCenter*/*WindowWidth* pair when present (linear, or
   as *VOILUTFunction* says: ``LINEAR_EXACT``, ``SIGMOID``); else the first
   item of *VOILUTSequence*; else min-max over the values.
3. ``MONOCHROME1`` is inverted after VOI, so the output is always
   "bone bright" (lungs dark).
4. :func:`resize_square` to ``size x size`` (aspect not kept), then
   :func:`normalise_to_uint8` (0.5th..99.5th percentile to 0..255).

PNG/JPEG files go through steps 4 only.

:func:`load_dicom_image` is the fast path of the product. Uncompressed and
losslessly decoded pixels are summed in integers straight into the output
pixels (the same bins as Pillow's BOX resize), after clipping them to a linear
window's end points, so the result equals :func:`load_dicom_image_naive` (the
straightforward reference) up to float rounding. JPEG 2000 and HTJ2K are decoded
at reduced resolution (their wavelet low-pass band, smallest level >= ``2 * size``),
resampled as the band's own inverse wavelet transform (details zero) averaged over
the reference's bins; JPEG baseline with DCT scaling. Those differ from the
reference by a few grey levels (tens at some sharp edges), with the same
predictions (checked by ``python -m bench`` and the tests).

Every failure is raised as a :class:`~cxr_orient.errors.InputError` subclass;
no pydicom, numpy, Pillow or codec exception escapes the ``load_*`` functions
or :func:`dataset_to_image` (unknown ones become
:class:`~cxr_orient.errors.DecodeError`).

Modules
-------
Each module holds one concern and imports only public names of the others
(dependencies point down this list; none back up):

* :mod:`~cxr_orient.imaging.pipeline`: the entry points (``load_*``,
  :func:`dataset_to_image`), composing the modules below.
* :mod:`~cxr_orient.imaging.header`: :func:`read_header`, :class:`DicomHeader`,
  :func:`view_to_label`, :func:`view_to_projection`.
* :mod:`~cxr_orient.imaging.validation`: the checks above, made before decoding;
  the VOI choice; the one parser of *RescaleSlope*/*RescaleIntercept*.
* :mod:`~cxr_orient.imaging.decoders`: one module per codec family, chosen by
  transfer syntax from a table (``native``, ``rle``, ``jpeg``, ``jpegls``,
  ``jpeg2000``, ``htj2k``; the interface in ``decoders.base``).
* :mod:`~cxr_orient.imaging.reading`: bytes to dataset, with the bounded inflate
  of deflated datasets and the truncation checks.
* :mod:`~cxr_orient.imaging.wavelet`: the JPEG 2000 band resampling.
* :mod:`~cxr_orient.imaging.processing`: pure array steps (rescale, window,
  inversion, BOX resizes, normalisation, :func:`to_rgb`).
* :mod:`~cxr_orient.imaging.attributes`, :mod:`~cxr_orient.imaging.errors`,
  :mod:`~cxr_orient.imaging.limits`: element access, error wrapping, size limits.

Adding a decoder
----------------
A new codec (HTJ2K, a GPU decoder) is one new module and one table entry: write
``cxr_orient/imaging/decoders/<name>.py`` defining ``DECODER =
Decoder(name=..., transfer_syntaxes=..., decode=..., is_available=...)``, where
``decode(ds, spec, *, size, path)`` returns the first frame's stored values as
:class:`~cxr_orient.imaging.decoders.base.Decoded` (``factor`` > 1 when reduced;
the shared steps ``mask_to_bits_stored``, ``first_frame`` and
``decode_with_pydicom`` are in ``decoders.base``), and add it to ``DECODERS`` in
``decoders/__init__.py``. Placed before an existing decoder of the same syntaxes,
it is used wherever its ``is_available()`` is true and it is not turned off
(``decoders.turn_off``, CXR_CPU_DECODERS_OFF), the older one otherwise: JPEG lossless
goes to libjpeg-turbo (``decoders.jpeg_turbo``) before pydicom's plugins. A new
syntax is then accepted by validation; list it under "Accepted images" above.
"""

from __future__ import annotations

from cxr_orient.imaging.decoders import SUPPORTED_TRANSFER_SYNTAXES
from cxr_orient.imaging.header import (
    AP_VIEWS,
    FRONTAL_VIEWS,
    LATERAL_VIEWS,
    PA_VIEWS,
    PROJECTIONS,
    DicomHeader,
    read_header,
    view_to_label,
    view_to_projection,
)
from cxr_orient.imaging.limits import DEFAULT_MAX_PIXELS
from cxr_orient.imaging.pipeline import (
    MODEL_INPUT_SIZE,
    dataset_to_image,
    load_dicom_image,
    load_dicom_image_naive,
    load_image_file,
)
from cxr_orient.imaging.processing import normalise_to_uint8, resize_square, to_rgb
from cxr_orient.imaging.reading import inflated_size_limit

__all__ = [
    "AP_VIEWS",
    "DEFAULT_MAX_PIXELS",
    "FRONTAL_VIEWS",
    "LATERAL_VIEWS",
    "MODEL_INPUT_SIZE",
    "PA_VIEWS",
    "PROJECTIONS",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "DicomHeader",
    "dataset_to_image",
    "inflated_size_limit",
    "load_dicom_image",
    "load_dicom_image_naive",
    "load_image_file",
    "normalise_to_uint8",
    "read_header",
    "resize_square",
    "to_rgb",
    "view_to_label",
    "view_to_projection",
]
