"""Decoding one batch in a pool process: CPU threads, and the card where there is one.

On a CPU host (or ``CXR_DECODE_DEVICE=cpu``) each file is read, checked and decoded in
the process's decode threads (``CXR_DECODE_THREADS``). Where the card decodes
(:mod:`cxr_orient.imaging.gpu`), the threads read, check and plan every file first;
the files the card cannot take are then decoded in the threads while the main thread
hands all the others to the card in one call, and a file the card fails on is decoded
on the CPU, so the answers are the CPU path's. The card is set up in the pool process,
after fork (:func:`start_decoding`), never in the prefork parent.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import numpy as np

from cxr_orient.errors import CxrError, DecodeError
from cxr_orient.imaging import to_rgb
from cxr_orient.imaging.decoders import turn_off
from cxr_orient.imaging.gpu import (
    CardJob,
    PlannedImage,
    card_syntaxes,
    choose_decode_device,
    decode_on_cpu,
    read_and_plan,
)
from cxr_orient.intake import load_checked_image, read_checked
from cxr_orient.settings import Settings

if TYPE_CHECKING:
    from cxr_orient.imaging.gpu.card import CardDecoder

__all__ = [
    "BatchCard",
    "DecodeResult",
    "FileToDecode",
    "decode_batch",
    "decode_batch_with",
    "decode_device",
    "start_decoding",
]

logger = logging.getLogger(__name__)

#: (RGB uint8 image or None, the error or None, milliseconds spent on this image).
DecodeResult = tuple[np.ndarray | None, CxrError | None, float]


class FileToDecode(Protocol):
    @property
    def instance_id(self) -> int: ...
    @property
    def file_path(self) -> str: ...
    @property
    def file_sha256(self) -> str: ...


_EXECUTOR: ThreadPoolExecutor | None = None
_CARD: CardDecoder | None = None
_CARD_RESOLVED = False


def _executor(settings: Settings) -> ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        threads = settings.decode.decode_threads or os.cpu_count() or 1
        _EXECUTOR = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
    return _EXECUTOR


def abandon_decode_threads() -> None:
    """Replace this process's decode threads (the next batch gets new ones): after a soft
    time limit one of them may be stuck for good in a read that hung."""
    global _EXECUTOR
    stuck, _EXECUTOR = _EXECUTOR, None
    if stuck is not None:
        stuck.shutdown(wait=False, cancel_futures=True)


def _card(settings: Settings) -> CardDecoder | None:
    """This process's card decoder, built on first use (None: decode on the CPU)."""
    global _CARD, _CARD_RESOLVED
    if _CARD_RESOLVED:
        return _CARD
    _CARD_RESOLVED = True
    # The CPU decoders too, once per process: the card hands what it fails on to them.
    turn_off(settings.decode.cpu_decoders_off)
    device, reason = choose_decode_device(settings.decode.decode_device)
    if device == "cpu":
        (logger.warning if settings.decode.decode_device == "gpu" else logger.debug)("%s", reason)
        return None
    try:
        from cxr_orient.imaging.gpu.card import CardDecoder

        _CARD = CardDecoder(cpu_threads=max(1, settings.decode.decode_threads))
    except Exception as e:  # no card, no driver, a library that does not load
        (logger.warning if settings.decode.decode_device == "gpu" else logger.info)(
            "CXR_DECODE_DEVICE=%s: no card decoding here (%s: %s); decoding on the CPU",
            settings.decode.decode_device,
            type(e).__name__,
            e,
        )
    return _CARD


def start_decoding(settings: Settings) -> str:
    """Set up this pool process's decoding (after fork); a phrase for the log."""
    card = _card(settings)
    return f"decoding on the card ({card.name})" if card is not None else "decoding on the CPU"


def decode_device(settings: Settings) -> str:
    """``gpu`` where this process decodes on the card, else ``cpu``."""
    return "gpu" if _card(settings) is not None else "cpu"


def _unexpected(work: FileToDecode, exc: Exception) -> DecodeError:
    logger.error("unexpected error decoding instance %d", work.instance_id, exc_info=exc)
    return DecodeError(f"unexpected {type(exc).__name__}: {exc}")


def _timed_decode(work: FileToDecode, settings: Settings, size: int) -> DecodeResult:
    start = time.perf_counter()
    try:
        grey = load_checked_image(
            work.file_path, expected_sha256=work.file_sha256, intake=settings.intake, size=size
        )
        # Three channels made here, in the decode thread, in parallel: on a GPU the
        # model runs 6x faster fed RGB uint8 than making the channels itself.
        return to_rgb(grey), None, (time.perf_counter() - start) * 1000
    except CxrError as exc:
        return None, exc, (time.perf_counter() - start) * 1000
    except Exception as exc:  # a codec bug must fail this image only
        return None, _unexpected(work, exc), (time.perf_counter() - start) * 1000


def _timed_read(
    work: FileToDecode, settings: Settings, size: int
) -> tuple[PlannedImage | None, CxrError | None, float]:
    start = time.perf_counter()
    try:
        checked = read_checked(
            work.file_path, expected_sha256=work.file_sha256, intake=settings.intake
        )
        planned = read_and_plan(
            checked.real,
            data=checked.data,
            size=size,
            max_pixels=settings.intake.max_pixels,
            syntaxes=card_syntaxes(settings.decode.card_syntaxes),
        )
        return planned, None, (time.perf_counter() - start) * 1000
    except CxrError as exc:
        return None, exc, (time.perf_counter() - start) * 1000
    except Exception as exc:
        return None, _unexpected(work, exc), (time.perf_counter() - start) * 1000


def _timed_cpu(
    work: FileToDecode, planned: PlannedImage, settings: Settings, size: int, spent_ms: float
) -> DecodeResult:
    start = time.perf_counter()
    try:
        grey = decode_on_cpu(planned, size=size, max_pixels=settings.intake.max_pixels)
        return to_rgb(grey), None, spent_ms + (time.perf_counter() - start) * 1000
    except CxrError as exc:
        return None, exc, spent_ms + (time.perf_counter() - start) * 1000
    except Exception as exc:
        return None, _unexpected(work, exc), spent_ms + (time.perf_counter() - start) * 1000


class BatchCard(Protocol):
    """What :func:`decode_batch_with` needs of a card: :class:`CardDecoder`'s ``decode``."""

    def decode(self, jobs: Sequence[CardJob], *, size: int) -> list[np.ndarray | Exception]: ...


def decode_batch(work: Sequence[FileToDecode], settings: Settings, size: int) -> list[DecodeResult]:
    """Each file's image (or error) and its decode time, in the order of ``work``, on this
    process's card where it has one."""
    return decode_batch_with(work, settings, size, card=_card(settings))


def decode_batch_with(
    work: Sequence[FileToDecode], settings: Settings, size: int, *, card: BatchCard | None
) -> list[DecodeResult]:
    """:func:`decode_batch` with the card given (None: every file on the CPU threads)."""
    pool = _executor(settings)
    if card is None:
        return list(pool.map(lambda w: _timed_decode(w, settings, size), work))
    reads = list(pool.map(lambda w: _timed_read(w, settings, size), work))
    results: list[DecodeResult | None] = [None] * len(work)
    on_cpu: dict[int, Future[DecodeResult]] = {}
    on_card: list[int] = []
    for i, (w, (planned, error, ms)) in enumerate(zip(work, reads, strict=True)):
        if planned is None:
            results[i] = (None, error, ms)
        elif planned.job is None:
            on_cpu[i] = pool.submit(_timed_cpu, w, planned, settings, size, ms)
        else:
            on_card.append(i)
    if on_card:
        start = time.perf_counter()
        jobs = [reads[i][0].job for i in on_card]  # type: ignore[union-attr]
        answers = card.decode([j for j in jobs if j is not None], size=size)
        share = (time.perf_counter() - start) * 1000 / len(on_card)
        for i, answer in zip(on_card, answers, strict=True):
            planned, _, ms = reads[i]
            assert planned is not None
            if isinstance(answer, Exception):
                logger.info(
                    "the card could not decode %s (%s); decoding it on the CPU",
                    planned.path,
                    answer,
                )
                on_cpu[i] = pool.submit(_timed_cpu, work[i], planned, settings, size, ms + share)
            else:
                results[i] = (to_rgb(answer), None, ms + share)
    for i, future in on_cpu.items():
        results[i] = future.result()
    return [r for r in results if r is not None]
