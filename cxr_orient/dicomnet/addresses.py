"""How the DICOM node names its peers: AE titles, the callers the listener allows, and
the result destinations SRs go to, each parsed from its written form once.

The one AE-title rule lives here: every AE title a setting or a URL carries (our own,
the calling one for results, a destination's, an allowed caller's) goes through
:func:`check_ae_title`. The settings (``cxr_orient.settings``) call these parsers when
they are read; the senders and the outbox call them on what a row recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

__all__ = [
    "AllowedCaller",
    "ResultDestination",
    "check_ae_title",
    "parse_allowed_caller",
    "parse_result_destination",
]

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII, no backslash


def check_ae_title(value: str, *, name: str) -> str:
    """An AE title as DICOM allows it (1-16 printable ASCII characters, no backslash, not
    all spaces), stripped; else ValueError naming ``name`` (the setting or the entry)."""
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(stripped):
        raise ValueError(
            f"{name}: {value!r} is not an AE title (1-16 printable ASCII characters, no backslash)"
        )
    return stripped


class AllowedCaller(NamedTuple):
    """One entry of CXR_DICOM_ALLOWED_CALLERS: a calling AE title, and the one peer
    address it must call from (None: any)."""

    ae_title: str
    host: str | None


def parse_allowed_caller(text: str) -> AllowedCaller:
    """``AET`` or ``AET@host``; ValueError when the AE title is not one."""
    title, _, host = text.strip().partition("@")
    return AllowedCaller(
        check_ae_title(title, name=f"CXR_DICOM_ALLOWED_CALLERS entry {text!r}"),
        host.strip() or None,
    )


@dataclass(frozen=True)
class ResultDestination:
    """One entry of CXR_RESULT_DESTINATIONS: a C-STORE SCP or a STOW-RS endpoint."""

    #: ``dicom``, ``dicomweb+http`` or ``dicomweb+https``.
    scheme: str
    host: str
    port: int
    #: The called AE title (``dicom`` only).
    ae_title: str | None = None
    #: The path of the DICOMweb service root (``dicomweb+*`` only), e.g. ``/dicom-web``.
    path: str = ""

    @property
    def url(self) -> str:
        """The canonical spelling: what the outbox records as the destination."""
        if self.scheme == "dicom":
            return f"dicom://{self.ae_title}@{self.host}:{self.port}"
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    @property
    def http_url(self) -> str:
        """The DICOMweb service root as an http(s) URL (``dicomweb+*`` only)."""
        return f"{self.scheme.removeprefix('dicomweb+')}://{self.host}:{self.port}{self.path}"


def parse_result_destination(text: str) -> ResultDestination:
    """``dicom://AET@host:port`` or ``dicomweb+http(s)://host:port/path``; ValueError
    saying what is wrong otherwise."""
    where = f"CXR_RESULT_DESTINATIONS entry {text!r}"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    if parts.scheme not in {"dicom", "dicomweb+http", "dicomweb+https"}:
        raise ValueError(f"{where}: scheme must be dicom://, dicomweb+http:// or dicomweb+https://")
    if not parts.hostname:
        raise ValueError(f"{where}: no host")
    if parts.query or parts.fragment or parts.password:
        raise ValueError(f"{where}: no query, fragment or password allowed")
    if parts.scheme == "dicom":
        if port is None:
            raise ValueError(f"{where}: a dicom:// destination needs a port")
        if parts.path not in ("", "/"):
            raise ValueError(f"{where}: a dicom:// destination has no path")
        if not parts.username:
            raise ValueError(f"{where}: the called AE title is missing (dicom://AET@host:port)")
        return ResultDestination(
            "dicom", parts.hostname, port, ae_title=check_ae_title(parts.username, name=where)
        )
    if parts.username:
        raise ValueError(f"{where}: no user in a DICOMweb URL")
    default_port = 443 if parts.scheme == "dicomweb+https" else 80
    return ResultDestination(
        parts.scheme, parts.hostname, port or default_port, path=parts.path.rstrip("/")
    )
