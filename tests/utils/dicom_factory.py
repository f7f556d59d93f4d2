"""Test factories for DICOM files: a re-export of :mod:`cxr_orient.synthetic`."""

from __future__ import annotations

from cxr_orient.synthetic import COVID_CXR, make_dicom, real_pixels, synthetic_pixels

__all__ = ["COVID_CXR", "make_dicom", "real_pixels", "synthetic_pixels"]
