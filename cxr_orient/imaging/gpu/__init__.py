"""Decoding on the GPU: NVIDIA nvImageCodec for the JPEG family, the rest on the card.

A worker on a GPU host hands each batch's files of the transfer syntaxes
``CXR_CARD_SYNTAXES`` names to the card in one call (nvImageCodec: nvJPEG2000 for
JPEG 2000 and HTJ2K, nvJPEG for JPEG baseline and lossless; native little-endian pixels
are copied to the card as read); the first frame's stored values stay in device
memory, where the clip to a linear window, the 256 px area
(Pillow BOX) resize, the modality rescale, the window and the MONOCHROME1 inversion
are done (CuPy). Only the ``size x size`` result comes back to the host, where
:func:`~cxr_orient.imaging.processing.normalise_to_uint8` ends it as on the CPU path.
Every other transfer syntax, and any file the card cannot take (signed pixels, a
Modality or VOI LUT table, an image smaller than the output, a decoder error), goes the
CPU path (:func:`cxr_orient.imaging.decode_dataset`).

Modules (dependencies point down the list):

* :mod:`~cxr_orient.imaging.gpu.card`: the nvImageCodec decoder and the CuPy steps;
  imported only where it is used, in a worker pool process after fork (CUDA state must
  never be created in the parent of a prefork pool).
* :mod:`~cxr_orient.imaging.gpu.split`: a file's bytes to a validated dataset planned
  for the card or the CPU, and the CPU decode of one (what the worker's threads run).
* :mod:`~cxr_orient.imaging.gpu.device`: the ``CXR_DECODE_DEVICE`` choice, from what is
  installed, without importing (or initialising) CUDA.
* :mod:`~cxr_orient.imaging.gpu.plan`: which datasets go to the card, and what the
  card needs to know about each (:class:`CardJob`); CPU only.
* :mod:`~cxr_orient.imaging.gpu.reduce`: the array steps, written once for any array
  module (CuPy on the card; NumPy in the tests, which run where there is no GPU).

Nothing here imports nvImageCodec or CuPy at import time: the package imports cleanly
where they are not installed.
"""

from __future__ import annotations

from cxr_orient.imaging.gpu.device import (
    DecodeDevice,
    card_libraries_installed,
    choose_decode_device,
)
from cxr_orient.imaging.gpu.plan import (
    CARD_SYNTAX_NAMES,
    CARD_TRANSFER_SYNTAXES,
    CardJob,
    card_syntaxes,
    plan_card_job,
)
from cxr_orient.imaging.gpu.reduce import box_matrix, reduce_stored
from cxr_orient.imaging.gpu.split import PlannedImage, decode_on_cpu, read_and_plan

__all__ = [
    "CARD_SYNTAX_NAMES",
    "CARD_TRANSFER_SYNTAXES",
    "CardJob",
    "DecodeDevice",
    "PlannedImage",
    "box_matrix",
    "card_libraries_installed",
    "card_syntaxes",
    "choose_decode_device",
    "decode_on_cpu",
    "plan_card_job",
    "read_and_plan",
    "reduce_stored",
]
