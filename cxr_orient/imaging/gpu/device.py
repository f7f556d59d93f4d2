"""Where a worker decodes: ``CXR_DECODE_DEVICE`` (auto, cpu, gpu) and what is installed.

The choice is made from installed packages only (``importlib.util.find_spec``): no
CUDA library is loaded here, so the prefork parent can call it safely. Whether a card
is actually there is learned when :class:`~cxr_orient.imaging.gpu.card.CardDecoder` is
built in the pool process; if that fails, the process decodes on the CPU.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

__all__ = ["DecodeDevice", "card_libraries_installed", "choose_decode_device"]

DecodeDevice = Literal["cpu", "gpu"]

#: The modules the card path needs: nvImageCodec (decode) and CuPy (the pixel steps).
CARD_MODULES = ("nvidia.nvimgcodec", "cupy")


def card_libraries_installed() -> bool:
    """Whether nvImageCodec and CuPy can be imported (found, not imported)."""
    for name in CARD_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):  # a parent package missing, or a broken one
            return False
    return True


def choose_decode_device(
    setting: str, *, libraries_installed: bool | None = None
) -> tuple[DecodeDevice, str]:
    """The device a pool process should decode on, and why, for ``CXR_DECODE_DEVICE``.

    ``cpu`` is always the CPU. ``gpu`` and ``auto`` take the card when its libraries
    are installed; without them ``auto`` quietly stays on the CPU and ``gpu`` does too,
    with a reason that says what is missing (the worker logs it as a warning).
    """
    if setting == "cpu":
        return "cpu", "CXR_DECODE_DEVICE=cpu"
    if setting not in ("auto", "gpu"):
        raise ValueError(f"CXR_DECODE_DEVICE must be auto, cpu or gpu, not {setting!r}")
    installed = card_libraries_installed() if libraries_installed is None else libraries_installed
    if installed:
        return "gpu", f"CXR_DECODE_DEVICE={setting}: nvImageCodec and CuPy are installed"
    return "cpu", (
        f"CXR_DECODE_DEVICE={setting}, but nvImageCodec or CuPy is not installed "
        f"(pip install nvidia-nvimgcodec-cu13[nvjpeg,nvjpeg2k] cupy-cuda13x); "
        "decoding on the CPU"
    )
