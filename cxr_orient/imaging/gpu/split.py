"""A file's bytes to a dataset planned for the card or the CPU, and the CPU decode of one.

What a worker's decode threads do on a GPU host: :func:`read_and_plan` parses and
validates the file (the same checks as :func:`cxr_orient.imaging.load_dicom_image`) and
plans a :class:`~cxr_orient.imaging.gpu.plan.CardJob` where the card can decode it;
:func:`decode_on_cpu` decodes a planned dataset on the CPU path (files the card cannot
take, and the fallback for any the card failed on), with the CPU path's answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import UID

from cxr_orient.imaging.decoders import PixelSpec
from cxr_orient.imaging.errors import errors_named
from cxr_orient.imaging.gpu.plan import CARD_TRANSFER_SYNTAXES, CardJob, plan_card_job
from cxr_orient.imaging.pipeline import decode_dataset
from cxr_orient.imaging.reading import inflated_size_limit, read_dataset
from cxr_orient.imaging.validation import validate_pixel_spec

__all__ = ["PlannedImage", "decode_on_cpu", "read_and_plan"]


@dataclass(frozen=True)
class PlannedImage:
    """A validated dataset, and its card job (None: the CPU decodes it)."""

    ds: pydicom.Dataset
    spec: PixelSpec
    job: CardJob | None
    path: Path


def read_and_plan(
    path: Path,
    *,
    data: bytes,
    size: int,
    max_pixels: int,
    syntaxes: frozenset[UID] = CARD_TRANSFER_SYNTAXES,
) -> PlannedImage:
    """Parse ``data`` (the bytes of ``path``), validate it, plan it for the card or not
    (only the transfer syntaxes in ``syntaxes`` go to the card).

    Raises only :mod:`cxr_orient.errors` classes, as :func:`load_dicom_image` does.
    """
    with errors_named(path):
        ds = read_dataset(
            path, stop_before_pixels=False, data=data, inflate_limit=inflated_size_limit(max_pixels)
        )
        spec = validate_pixel_spec(ds, max_pixels=max_pixels, path=path)
        return PlannedImage(
            ds, spec, plan_card_job(ds, spec, size=size, path=path, syntaxes=syntaxes), path
        )


def decode_on_cpu(planned: PlannedImage, *, size: int, max_pixels: int) -> np.ndarray:
    """The CPU path's ``size x size`` uint8 image of a planned dataset."""
    with errors_named(planned.path):
        return decode_dataset(planned.ds, size=size, max_pixels=max_pixels, path=planned.path)
