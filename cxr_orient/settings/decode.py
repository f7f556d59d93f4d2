"""Decoding in a worker pool process: how many threads, and what goes to the card."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from cxr_orient.settings.base import CommaList, SettingsGroup, from_text

__all__ = ["DecodeSettings"]


def _card_syntax_name(text: str) -> str:
    """A name of ``cxr_orient.imaging.gpu.plan.CARD_SYNTAX_NAMES``, lower case."""
    # Deferred: the names live beside the card's plan, which imports pydicom.
    from cxr_orient.imaging.gpu.plan import CARD_SYNTAX_NAMES

    name = text.strip().lower()
    if name not in CARD_SYNTAX_NAMES:
        raise ValueError(
            f"CXR_CARD_SYNTAXES: unknown {text!r} (choose from {', '.join(CARD_SYNTAX_NAMES)})"
        )
    return name


def _cpu_decoder_name(text: str) -> str:
    """A name of ``cxr_orient.imaging.decoders.DECODERS``, lower case."""
    # Deferred: the decoders import pydicom and their codecs.
    from cxr_orient.imaging.decoders import DECODERS

    name = text.strip().lower()
    known = [d.name for d in DECODERS]
    if name not in known:
        raise ValueError(f"CXR_CPU_DECODERS_OFF: unknown {text!r} (choose from {', '.join(known)})")
    return name


class DecodeSettings(SettingsGroup):
    """Decoder threads and the card."""

    decode_threads: int = Field(
        default=1,
        ge=0,
        le=256,
        description="CXR_DECODE_THREADS: decoder threads per worker pool process; 0 means "
        "one per CPU core. Default 1, because celery starts one pool process per core and "
        "decoding in one while another predicts measured fastest (docs/performance.md).",
    )
    decode_device: Literal["auto", "cpu", "gpu"] = Field(
        default="auto",
        description="CXR_DECODE_DEVICE: where a worker pool process decodes JPEG 2000, "
        "HTJ2K and JPEG baseline files. 'auto' and 'gpu' use the card (NVIDIA "
        "nvImageCodec and CuPy, when installed: the extra '.[gpu-decode]'; one call per "
        "batch, every other syntax on the CPU threads meanwhile); 'cpu' never does. "
        "Without the libraries, or without a card, decoding stays on the CPU ('gpu' says "
        "so in the log). Default 'auto'.",
    )
    card_syntaxes: CommaList[Annotated[str, from_text(_card_syntax_name)]] = Field(
        default=["htj2k-lossless", "htj2k-lossy", "jpeg-baseline", "jpeg-lossless", "native"],
        description="CXR_CARD_SYNTAXES: which transfer syntaxes a pool process that decodes "
        "on the card hands to it, a comma-separated list of htj2k-lossless, htj2k-lossy, "
        "j2k-lossless, j2k-lossy, jpeg-baseline, jpeg-lossless (process 14, SV1 and the "
        "other predictors) and native (uncompressed little endian: the stored values go "
        "to the card as read, the windowing and the resize are done there); the rest is "
        "decoded on the CPU. The default leaves classic JPEG 2000 on the CPU, which "
        "decodes it at reduced resolution faster than the card decodes it in full "
        "(docs/performance.md). Empty: nothing on the card. Default: every name but "
        "j2k-lossless and j2k-lossy.",
    )

    cpu_decoders_off: CommaList[Annotated[str, from_text(_cpu_decoder_name)]] = Field(
        default=[],
        description="CXR_CPU_DECODERS_OFF: CPU decoders a worker passes over, a comma-separated "
        "list of decoder names; 'libjpeg-turbo' sends JPEG lossless (process 14 and SV1) "
        "back to pydicom's plugins (pylibjpeg), about 4x slower a film "
        "(docs/performance.md). Default: none (libjpeg-turbo through imagecodecs decodes "
        "JPEG lossless where it is installed).",
    )

    @field_validator("card_syntaxes", "cpu_decoders_off")
    @classmethod
    def _each_once(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))
