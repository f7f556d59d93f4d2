"""A real Orthanc as the PACS of the tests: :mod:`bench.orthanc` (the benchmark starts the
same one), with a missing Orthanc failing the test with the Debian packages to install.

:func:`start` writes a config of its own (storage under the given folder, the given DICOM
and HTTP ports, DICOMweb on, authentication off on 127.0.0.1, the given modalities
allowed to store), starts ``Orthanc`` and waits for its REST API; :meth:`Orthanc.stop`
stops it; a restart on the same folder keeps what it stored. :meth:`Orthanc.get` /
:meth:`Orthanc.post` speak to its REST API; :meth:`Orthanc.structured_reports` and
:func:`sr_sources` read back the SRs it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.orthanc import (
    COMPREHENSIVE_SR,
    DICOMWEB_PLUGIN,
    Orthanc,
    OrthancMissingError,
    free_port,
    orthanc_binary,
    sr_sources,
)
from bench.orthanc import start as start_orthanc

__all__ = ["COMPREHENSIVE_SR", "DICOMWEB_PLUGIN", "Orthanc", "free_port", "sr_sources", "start"]


def start(
    folder: Path, dicom_port: int, http_port: int, modalities: dict[str, list[Any]] | None = None
) -> Orthanc:
    """A running Orthanc storing under ``folder`` (:func:`bench.orthanc.start`); fails the
    test when Orthanc is not installed."""
    try:
        orthanc_binary()
    except OrthancMissingError as exc:
        pytest.fail(str(exc))
    return start_orthanc(folder, dicom_port, http_port, modalities)
