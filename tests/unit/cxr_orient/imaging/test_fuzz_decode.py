"""Fuzzing the DICOM decoder with mutated valid files (hypothesis, bounded).

Whatever the bytes, ``load_dicom_image`` either returns a model input or raises
a :class:`CxrError` subclass (a recorded, coded failure); never anything else,
and never slowly: each file is decoded within a time bound. The memory bound
is CXR_MAX_PIXELS, checked from the header before decoding: mutated Rows/Columns
claiming gigapixels are refused, not allocated. The count: CXR_FUZZ_EXAMPLES, else the
hypothesis profile's (tests/conftest.py): 1000 in every run of the suite, 5000 with
HYPOTHESIS_PROFILE=thorough (about 40 s on an idle 2-core machine).
"""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from cxr_orient.errors import CxrError
from cxr_orient.imaging import load_dicom_image
from tests.utils.dicom_factory import make_dicom

# Mutated headers make pydicom warn about every odd element; the warnings are expected.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MAX_PIXELS = 2_000_000
SECONDS_PER_FILE = 5.0
#: Python and numpy memory one decode may hold at its peak (tracemalloc), far below
#: what an absurd Rows x Columns would allocate if it were not refused first.
PEAK_BYTES_PER_FILE = 256 << 20
#: An explicit count overrides the loaded profile's.
EXAMPLES = int(os.environ.get("CXR_FUZZ_EXAMPLES") or settings().max_examples)
STATS: dict[str, int] = {"examples": 0, "decoded": 0, "refused": 0, "peak_bytes": 0}
CODES: dict[str, int] = {}


def _seed(path: Path, syntax: str) -> bytes:
    y, x = np.mgrid[0:96, 0:80]
    pixels = (1500 + 900 * np.sin(x / 9) * np.cos(y / 13)).astype(np.uint16)
    return make_dicom(path, pixels, transfer_syntax=syntax).read_bytes()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    return [
        _seed(folder / f"{i}.dcm", s)
        for i, s in enumerate([ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
    ]


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 64)),
    st.tuples(st.just("u16"), st.integers(0, 10**6), st.integers(0, 0xFFFF)),
)


def _mutate(data: bytes, ops: list[tuple[str, int, int]], header_bias: bool) -> bytes:
    buf = bytearray(data)
    for kind, where, value in ops:
        if not buf:
            break
        # Most interesting bytes are in the header (lengths, VRs, Rows...).
        limit = min(len(buf), 700) if header_bias else len(buf)
        at = where % limit
        if kind == "flip":
            buf[at] ^= value
        elif kind == "truncate":
            del buf[at:]
        elif kind == "insert":
            buf.insert(at, value)
        elif kind == "delete":
            del buf[at : at + value]
        else:
            buf[at : at + 2] = value.to_bytes(2, "little")
    return bytes(buf)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2),
    ops=st.lists(mutation, min_size=1, max_size=6),
    header_bias=st.booleans(),
)
def test_mutated_dicom_decodes_or_raises_cxr_error(
    seeds: list[bytes],
    tmp_path: Path,
    seed: int,
    ops: list[tuple[str, int, int]],
    header_bias: bool,
) -> None:
    path = tmp_path / "fuzz.dcm"
    path.write_bytes(_mutate(seeds[seed], ops, header_bias))
    STATS["examples"] += 1
    start = time.perf_counter()
    tracemalloc.start()
    try:
        image = load_dicom_image(path, size=64, max_pixels=MAX_PIXELS)
    except CxrError as exc:
        STATS["refused"] += 1
        CODES[exc.code] = CODES.get(exc.code, 0) + 1
    else:
        STATS["decoded"] += 1
        assert image.shape == (64, 64)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    STATS["peak_bytes"] = max(STATS["peak_bytes"], peak)
    assert peak < PEAK_BYTES_PER_FILE, f"{peak >> 20} MiB for one file"
    assert elapsed < SECONDS_PER_FILE, f"{elapsed:.1f}s for one {path.stat().st_size}-byte file"


@pytest.fixture(scope="module", autouse=True)
def fuzz_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the module's tests, in the process that ran the fuzzer (a separate report test
    could be handed to another test process): the counts for docs/reliability.md."""
    yield
    if not STATS["examples"]:
        return  # the fuzzer was deselected
    report = {**STATS, "codes": CODES}
    out = tmp_path_factory.getbasetemp() / "fuzz-counts.json"
    out.write_text(json.dumps(report, sort_keys=True))
    print(f"\nFUZZ-COUNTS {json.dumps(report, sort_keys=True)}")
