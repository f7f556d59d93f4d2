"""Test factories for DICOM files: a re-export of :mod:`bench.dicom_factory` (the
benchmark builds its corpus with the same functions)."""

from __future__ import annotations

from bench.dicom_factory import COVID_CXR, make_dicom, real_pixels, synthetic_pixels

__all__ = ["COVID_CXR", "make_dicom", "real_pixels", "synthetic_pixels"]
