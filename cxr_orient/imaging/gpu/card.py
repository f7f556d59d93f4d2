"""The card: nvImageCodec decodes a batch of codestreams into device memory, CuPy reduces
each to ``size x size`` there, and only that comes back.

Import this module only in the process that uses the card, after any fork: importing
it loads CUDA libraries, and building a :class:`CardDecoder` creates a CUDA context.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxr_orient.errors import DecodeError
from cxr_orient.imaging.errors import where
from cxr_orient.imaging.gpu.plan import CardJob
from cxr_orient.imaging.gpu.reduce import box_matrix, reduce_stored
from cxr_orient.imaging.processing import normalise_to_uint8

__all__ = ["CardDecoder"]

logger = logging.getLogger(__name__)


class CardDecoder:
    """One nvImageCodec decoder on one card, with the BOX matrices it has used."""

    def __init__(self, *, device_id: int = 0, cpu_threads: int = 1) -> None:
        import cupy
        from nvidia import nvimgcodec

        self._cupy = cupy
        self.device_id = device_id
        cupy.cuda.Device(device_id).use()
        self._decoder = nvimgcodec.Decoder(device_id=device_id, max_num_cpu_threads=cpu_threads)
        self._params = nvimgcodec.DecodeParams(
            allow_any_depth=True,
            color_spec=nvimgcodec.ColorSpec.UNCHANGED,
            apply_exif_orientation=False,
        )
        self._matrices: dict[tuple[int, int], Any] = {}
        #: Seconds the last :meth:`decode` spent decoding, and reducing (to host).
        self.last_seconds = (0.0, 0.0)
        self.name = (
            f"nvImageCodec {nvimgcodec.__version__} on "
            f"{cupy.cuda.runtime.getDeviceProperties(device_id)['name'].decode()}"
        )

    def _matrix(self, length: int, size: int) -> Any:
        key = (length, size)
        if key not in self._matrices:
            self._matrices[key] = self._cupy.asarray(box_matrix(length, size))
        return self._matrices[key]

    def decode(self, jobs: Sequence[CardJob], *, size: int) -> list[np.ndarray | Exception]:
        """``size x size`` uint8 images (or the error of each that failed), in order."""
        if not jobs:
            return []
        cupy = self._cupy
        start = time.perf_counter()
        coded = [job for job in jobs if job.raw_dtype is None]
        images: dict[int, Any] = {}
        try:
            if coded:
                answers = self._decoder.decode(
                    [job.codestream for job in coded], params=self._params
                )
                images = {id(job): image for job, image in zip(coded, answers, strict=True)}
        except Exception as e:  # the whole call failed: each of its jobs reports it
            failed = DecodeError(f"nvImageCodec: {e}")
            images = {id(job): failed for job in coded}
        decoded = time.perf_counter()
        out: list[np.ndarray | Exception] = []
        for job in jobs:
            if job.raw_dtype is None:
                image = images.get(id(job))
                if isinstance(image, Exception):
                    out.append(DecodeError(f"{where(job.path)}{image}"))
                    continue
                if image is None:
                    out.append(DecodeError(f"{where(job.path)}nvImageCodec could not decode it"))
                    continue
            try:
                if job.raw_dtype is not None:  # native pixels: to the card as read
                    stored = cupy.asarray(
                        np.frombuffer(job.codestream, job.raw_dtype).reshape(job.rows, job.columns)
                    )
                else:
                    stored = cupy.asarray(image)
                small = reduce_stored(
                    cupy, stored, job, self._matrix(job.rows, size), self._matrix(job.columns, size)
                )
                out.append(normalise_to_uint8(cupy.asnumpy(small)))
            except Exception as e:
                out.append(DecodeError(f"{where(job.path)}{type(e).__name__}: {e}"))
        self.last_seconds = (decoded - start, time.perf_counter() - decoded)
        return out
