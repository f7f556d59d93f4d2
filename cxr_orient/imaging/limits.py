"""Size limits shared by reading, validation and the entry points."""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_PIXELS", "MAX_SIDE"]

DEFAULT_MAX_PIXELS = 60_000_000
"""Largest Rows * Columns accepted (about 7750 x 7750); bigger is refused unread."""

MAX_SIDE = 65535
"""Largest Rows or Columns accepted (the largest value of a DICOM US element)."""
