"""Typed access to the values of DICOM data elements (absent and empty alike)."""

from __future__ import annotations

import pydicom

from cxr_orient.errors import InvalidAttributeError, MissingAttributeError

__all__ = ["is_multi", "optional_int", "optional_text", "required_int"]


def required_int(ds: pydicom.Dataset, keyword: str, where: str, default: int | None = None) -> int:
    """The element's value as an int; ``default`` when absent or empty (or
    MissingAttributeError without one); InvalidAttributeError when not an integer.
    ``where`` starts the error message (see :func:`cxr_orient.imaging.errors.where`)."""
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise MissingAttributeError(f"{where}{keyword} is missing")
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise InvalidAttributeError(f"{where}{keyword} {value!r} is not an integer") from e


def optional_int(ds: pydicom.Dataset, keyword: str) -> int | None:
    """The element's value as an int, or None when absent, empty or not an integer."""
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def optional_text(ds: pydicom.Dataset, keyword: str) -> str | None:
    """The element's value as stripped text, or None when absent or blank."""
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def is_multi(value: object) -> bool:
    """Whether an element value holds several values (VM > 1)."""
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"
