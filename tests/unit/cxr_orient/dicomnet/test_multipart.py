"""cxr_orient.dicomnet.multipart: multipart/related read as it arrives, bounded."""

from __future__ import annotations

import pytest

from cxr_orient.dicomnet.multipart import (
    MultipartError,
    Part,
    RelatedStreamReader,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
    related_boundary,
)

BOUNDARY = "b0undary-7f3a"


def body(*parts: bytes, preamble: bytes = b"", epilogue: bytes = b"", close: bool = True) -> bytes:
    out = preamble
    for data in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    if close:
        out += f"--{BOUNDARY}--\r\n".encode() + epilogue
    return out


def read(
    raw: bytes, *, chunk: int = 1 << 16, max_part: int = 1 << 20, max_total: int = 1 << 24
) -> list[Part]:
    reader = RelatedStreamReader(BOUNDARY, max_part_bytes=max_part, max_total_bytes=max_total)
    parts: list[Part] = []
    for start in range(0, len(raw), chunk):
        parts += reader.feed(raw[start : start + chunk])
    return parts + reader.finish()


@pytest.mark.parametrize(
    "content_type",
    [
        f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        f'Multipart/Related; boundary="{BOUNDARY}"; type=application/dicom',
        f"multipart/related; boundary={BOUNDARY}",  # type omitted: assumed
    ],
    ids=["quoted-type", "case-and-order", "no-type"],
)
def test_the_boundary_of_a_related_dicom_body(content_type: str) -> None:
    assert related_boundary(content_type) == BOUNDARY


@pytest.mark.parametrize(
    "content_type, error",
    [
        (None, UnsupportedMediaTypeError),
        ("application/dicom", UnsupportedMediaTypeError),
        (f"multipart/form-data; boundary={BOUNDARY}", UnsupportedMediaTypeError),
        (
            f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
            UnsupportedMediaTypeError,
        ),
        ('multipart/related; type="application/dicom"', MultipartError),
        ('multipart/related; type="application/dicom"; boundary=' + "x" * 71, MultipartError),
    ],
    ids=["none", "single-part", "form-data", "dicom-json", "no-boundary", "long-boundary"],
)
def test_other_media_types_are_refused(content_type: str | None, error: type) -> None:
    with pytest.raises(error):
        related_boundary(content_type)


@pytest.mark.parametrize("chunk", [1, 7, 4096], ids=lambda c: f"chunk{c}")
def test_parts_whatever_the_chunking(chunk: int) -> None:
    # Data holding CRLF, dashes and a near-boundary must come back byte for byte.
    first = b"DICM\r\n--b0undary-7f3\r\n\x00\xff" * 50
    second = b"\r\n\r\n--"
    parts = read(body(first, second), chunk=chunk)
    assert [p.data for p in parts] == [first, second]
    assert [p.index for p in parts] == [0, 1]
    assert all(p.content_type == "application/dicom" for p in parts)
    assert not any(p.too_large or p.incomplete for p in parts)


def test_preamble_and_epilogue_are_ignored() -> None:
    parts = read(body(b"one", preamble=b"this is a preamble\r\n", epilogue=b"trailing junk"))
    assert [p.data for p in parts] == [b"one"]


def test_a_part_over_the_bound_is_read_past_and_the_next_goes_on() -> None:
    parts = read(body(b"x" * 1001, b"small"), chunk=100, max_part=1000)
    assert parts[0].too_large and parts[0].data is None and parts[0].size == 1001
    assert parts[1].data == b"small" and not parts[1].too_large


def test_a_body_over_the_total_bound_stops_reading() -> None:
    reader = RelatedStreamReader(BOUNDARY, max_part_bytes=1 << 20, max_total_bytes=500)
    raw = body(b"a" * 300, b"b" * 300)
    with pytest.raises(RequestTooLargeError):
        for start in range(0, len(raw), 100):
            reader.feed(raw[start : start + 100])
    assert reader.total <= 600


def test_a_body_cut_off_gives_its_last_part_incomplete() -> None:
    raw = body(b"whole", b"cut off here", close=False)[:-8]
    parts = read(raw)
    assert parts[0].data == b"whole"
    assert parts[1].incomplete and parts[1].data is None


@pytest.mark.parametrize(
    "raw",
    [b"", b"no delimiter at all" * 5000, f"--{BOUNDARY}--\r\n".encode()],
    ids=["empty", "no-delimiter", "no-part"],
)
def test_a_body_without_parts_is_refused(raw: bytes) -> None:
    with pytest.raises(MultipartError):
        read(raw)


def test_a_malformed_delimiter_line_is_refused() -> None:
    raw = f"--{BOUNDARY}XYZ\r\n\r\n".encode() + b"data"
    with pytest.raises(MultipartError):
        read(raw)
