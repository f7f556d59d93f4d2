"""cxr-orient: frontal vs lateral chest radiograph classification at archive scale."""

from cxr_orient.errors import CxrError
from cxr_orient.settings import Settings, get_settings

__all__ = ["CxrError", "Settings", "get_settings"]
__version__ = "0.1.0"

LABELS: tuple[str, str] = ("frontal", "lateral")
"""Class order of every model: index 0 frontal, index 1 lateral."""
