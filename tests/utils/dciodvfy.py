"""dicom3tools' ``dciodvfy`` (Debian package dicom3tools) on a DICOM file: the checker
the SRs must pass with no errors (docs/dicom.md lists the warnings it gives and why)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["KNOWN_WARNINGS", "dciodvfy"]

#: The warnings docs/dicom.md explains; any other fails the tests that check them.
KNOWN_WARNINGS = ("Unrecognized defined term <99CXR>", "needed to build DICOMDIR")


def dciodvfy(path: Path) -> tuple[list[str], list[str], str]:
    """(error lines, warning lines, the whole report) of ``dciodvfy path``."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy is missing (apt-get install dicom3tools)")
    result = subprocess.run(
        [tool, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    report = result.stdout + result.stderr
    lines = report.splitlines()
    return (
        [line for line in lines if line.startswith("Error")],
        [line for line in lines if line.startswith("Warning")],
        report,
    )
