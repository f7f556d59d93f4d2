"""Streaming reader of ``multipart/related`` bodies (STOW-RS requests, RFC 2387), bounded.

The body is fed chunk by chunk as it arrives (python-multipart's parser does the byte
work); each part is held in memory only until it is complete, and at most
``max_part_bytes`` of it: a larger part is read past and handed back flagged
``too_large``, without its bytes, and the parts after it go on. More than
``max_total_bytes`` in all raises :class:`RequestTooLargeError`. A body that ends before its
closing delimiter gives its last part flagged ``incomplete``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from cxr_orient.errors import CxrError

__all__ = [
    "DICOM_MEDIA_TYPE",
    "MultipartError",
    "Part",
    "RelatedStreamReader",
    "RequestTooLargeError",
    "UnsupportedMediaTypeError",
    "related_boundary",
]

DICOM_MEDIA_TYPE = "application/dicom"
#: Bytes of preamble (RFC 2046: text before the first delimiter) skipped at most.
MAX_PREAMBLE = 64 * 1024


class MultipartError(CxrError):
    """The body is not a readable multipart message (HTTP 400)."""

    code = "bad_multipart"


class UnsupportedMediaTypeError(CxrError):
    """Not ``multipart/related; type="application/dicom"`` (HTTP 415)."""

    code = "unsupported_media_type"


class RequestTooLargeError(CxrError):
    """The body is larger than allowed (HTTP 413)."""

    code = "request_too_large"


def related_boundary(content_type: str | None, *, part_type: str = DICOM_MEDIA_TYPE) -> str:
    """The boundary of a ``multipart/related`` Content-Type whose ``type`` parameter is
    ``part_type`` (absent: assumed, as some senders omit it)."""
    if not content_type:
        raise UnsupportedMediaTypeError("no Content-Type: expected multipart/related")
    message = Message()
    message["content-type"] = content_type
    if message.get_content_type() != "multipart/related":
        raise UnsupportedMediaTypeError(
            f"Content-Type {message.get_content_type()!r}: expected multipart/related"
        )
    declared = message.get_param("type")
    if isinstance(declared, str) and declared.strip().lower() != part_type:
        raise UnsupportedMediaTypeError(
            f"multipart/related of type {declared!r}: only {part_type!r} is accepted"
        )
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise MultipartError("multipart/related without a valid boundary parameter")
    return boundary


@dataclass
class Part:
    """One body part: its headers (lower-case names), and its bytes unless it was too
    large or cut off."""

    index: int
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None
    size: int = 0
    too_large: bool = False
    incomplete: bool = False

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        if value is None:
            return None
        message = Message()
        message["content-type"] = value
        return message.get_content_type()


class RelatedStreamReader:
    """Feed the body with :meth:`feed` (each call returns the parts it completed), then
    call :meth:`finish` (returns a part cut off by the end of the body, if any)."""

    def __init__(self, boundary: str, *, max_part_bytes: int, max_total_bytes: int) -> None:
        self.max_part_bytes = max_part_bytes
        self.max_total_bytes = max_total_bytes
        self.total = 0
        self.ended = False
        self._delimiter = b"--" + boundary.encode("latin-1")
        self._started = False
        self._preamble = b""
        self._done: list[Part] = []
        self._current: Part | None = None
        self._buffer = bytearray()
        self._field = bytearray()
        self._value = bytearray()
        self._count = 0
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_header_count=16,
            max_header_size=8192,
        )

    # --- parser callbacks ---------------------------------------------------------

    def _part_begin(self) -> None:
        self._current = Part(index=self._count)
        self._count += 1
        self._buffer = bytearray()

    def _header_end(self) -> None:
        assert self._current is not None
        name = bytes(self._field).decode("latin-1").strip().lower()
        self._current.headers[name] = bytes(self._value).decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        assert part is not None
        part.size += end - start
        if part.too_large:
            return
        if part.size > self.max_part_bytes:
            part.too_large = True
            self._buffer = bytearray()
            return
        self._buffer.extend(data[start:end])

    def _part_end(self) -> None:
        part = self._current
        assert part is not None
        if not part.too_large:
            part.data = bytes(self._buffer)
        self._buffer = bytearray()
        self._done.append(part)
        self._current = None

    def _end(self) -> None:
        self.ended = True

    # --- feeding --------------------------------------------------------------------

    def _skip_preamble(self, chunk: bytes) -> bytes:
        """Drop what precedes the first delimiter (python-multipart wants it first)."""
        data = self._preamble + chunk
        at = 0
        while True:
            at = data.find(self._delimiter, at)
            if at < 0 or at == 0 or data[at - 2 : at] == b"\r\n":
                break
            at += 1
        if at < 0:
            if len(data) > MAX_PREAMBLE:
                raise MultipartError("no multipart delimiter at the start of the body")
            self._preamble = data
            return b""
        self._started = True
        self._preamble = b""
        return data[at:]

    def feed(self, chunk: bytes) -> list[Part]:
        self.total += len(chunk)
        if self.total > self.max_total_bytes:
            raise RequestTooLargeError(
                f"request body over {self.max_total_bytes} bytes (CXR_STOW_MAX_REQUEST_MB)"
            )
        if self.ended:  # the epilogue after the closing delimiter is ignored
            return []
        if not self._started:
            chunk = self._skip_preamble(chunk)
            if not chunk:
                return []
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise MultipartError(f"malformed multipart body: {exc}") from exc
        done, self._done = self._done, []
        return done

    def finish(self) -> list[Part]:
        """End of the body: a part still open was cut off (``incomplete``, no bytes); a
        body with no part at all is refused."""
        leftover: list[Part] = []
        if self._current is not None:
            self._current.incomplete = True
            self._current.data = None
            leftover.append(self._current)
            self._current = None
        if self._count == 0:
            raise MultipartError("the body holds no part")
        return leftover
