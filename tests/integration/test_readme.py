"""The README followed as written, by a new operator in a fresh folder (issue 19,
docs/security.md "Operator path"): its marked shell blocks run by bash in an empty
temporary folder against a real Orthanc, dcmtk, Redis, PostgreSQL and real worker,
listener and serve processes; only the ports, through the variables the README reads,
differ from the README's."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.utils.readme import operator_env
from tests.utils.worker import REPO

pytestmark = pytest.mark.integration

SAMPLES = REPO / "cxr_orient" / "samples"
PASSWORD = "correct horse battery"


def cli_in(folder: Path, env: dict[str, str], *args: str,
           stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``cxr-orient ARGS`` as the operator types it in ``folder``."""
    return subprocess.run(["cxr-orient", *args], cwd=folder, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300, check=False)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(1)


def sample_sops(*studies: str) -> set[str]:
    import pydicom

    return {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            for study in studies for path in (SAMPLES / study).glob("*.dcm")}


# --- the first command of the README's recipes, in a fresh folder -------------------


def test_db_upgrade_in_a_fresh_folder_makes_the_data_folder(tmp_path: Path) -> None:
    """`cxr-orient db upgrade` with no ./cxr-orient-data yet (SQLite, the default)."""
    env = operator_env()

    upgraded = cli_in(tmp_path, env, "db", "upgrade")

    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert (tmp_path / "cxr-orient-data" / "cxr-orient.db").is_file()
    assert cli_in(tmp_path, env, "status").returncode == 0


def test_a_failed_db_upgrade_does_not_advise_running_itself(tmp_path: Path) -> None:
    """The hint after a database error is the failing command's: `db upgrade` never
    suggests `db upgrade`; other commands still do."""
    (tmp_path / "not-a-folder").write_text("a file where the data folder should be")
    env = operator_env(CXR_DATA_DIR=str(tmp_path / "not-a-folder" / "data"))

    upgraded = cli_in(tmp_path, env, "db", "upgrade")
    results = cli_in(tmp_path, env, "results")

    assert upgraded.returncode == 1, upgraded.stdout + upgraded.stderr
    assert "unable to open database file" in upgraded.stderr, upgraded.stderr
    assert "db upgrade" not in upgraded.stderr, upgraded.stderr
    assert "Traceback" not in upgraded.stderr
    assert results.returncode == 1, results.stdout + results.stderr
    assert "`cxr-orient db upgrade`" in results.stderr, results.stderr
