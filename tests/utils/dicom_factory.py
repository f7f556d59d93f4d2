"""Test factories for DICOM files: a re-export of :mod:`bench.dicom_factory` (the
benchmark builds its corpus with the same functions), and reading a made file's UID back."""

from __future__ import annotations

from pathlib import Path

from bench.dicom_factory import COVID_CXR, make_dicom, real_pixels, synthetic_pixels

__all__ = ["COVID_CXR", "make_dicom", "real_pixels", "sop_instance_uid", "synthetic_pixels"]


def sop_instance_uid(path: Path) -> str:
    """The SOP Instance UID of the DICOM file at ``path`` (its header only)."""
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
