"""The README followed as written, by a new operator in a fresh folder (issue 19,
docs/security.md "Operator path"): its marked shell blocks run by bash in an empty
temporary folder against a real Orthanc, dcmtk, Redis, PostgreSQL and real worker,
listener and serve processes; only the ports, through the variables the README reads,
differ from the README's."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bench.orthanc import COMPREHENSIVE_SR, sr_sources
from tests.utils.dicomnode import free_port, need_tool
from tests.utils.env import temporary_pg_database
from tests.utils.readme import BlockRun, operator_env, readme_block, readme_blocks
from tests.utils.worker import REPO

pytestmark = pytest.mark.integration

SAMPLES = REPO / "cxr_orient" / "samples"
PASSWORD = "correct horse battery"


def cli_in(
    folder: Path, env: dict[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``cxr-orient ARGS`` as the operator types it in ``folder``."""
    return subprocess.run(
        ["cxr-orient", *args],
        cwd=folder,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(1)


def sample_sops(*studies: str) -> set[str]:
    import pydicom

    return {
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        for study in studies
        for path in (SAMPLES / study).glob("*.dcm")
    }


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


# --- the README's blocks -------------------------------------------------------------


def test_the_readme_marks_its_operator_blocks() -> None:
    assert set(readme_blocks()) == {"using-it", "dicom-node", "stow-rs", "review"}
    readme = (REPO / "README.md").read_text()
    assert "make demo    #" in readme and "make test    #" in readme


def test_the_dicom_node_and_stow_rs_recipes(tmp_path: Path, redis_url: str) -> None:
    """ "As a DICOM node" then the STOW-RS example, in one shell as the README says: the
    samples sent by dcmsend are classified and their SRs reach Orthanc with a worker
    started exactly as written (no beat), the results and the outbox are printed, the
    pull finds the PACS's undated study, a STOW-RS request by curl is stored, answered,
    classified, and the token is listed and revoked."""
    for tool in ("Orthanc", "dcmsend", "echoscu", "curl"):
        need_tool(tool)
    folder = tmp_path / "operator"
    folder.mkdir()
    pacs_dicom, pacs_http, listen_port, http_port = (free_port() for _ in range(4))
    env = operator_env(
        PACS_DICOM_PORT=str(pacs_dicom),
        PACS_HTTP_PORT=str(pacs_http),
        CXR_DICOM_PORT=str(listen_port),
        CXR_HTTP_PORT=str(http_port),
        CXR_BROKER_URL=redis_url,
    )
    recipe = readme_block("dicom-node") + readme_block("stow-rs")
    run = BlockRun(recipe, folder, env, tmp_path / "recipe.log").start()
    try:
        status = run.wait(timeout=900)
        out = run.output()
        assert status == 0, out[-6000:]
        destination = f"dicom://ORTHANC@127.0.0.1:{pacs_dicom}"
        assert f"listening on 127.0.0.1:{listen_port}" in out
        assert f"{destination}: pending 0, sent 2, failed 0" in out, out[-6000:]
        assert "2 instances found: 0 recorded before, 2 fetched, 0 failed; 2 queued" in out
        assert "2 instances found: 2 recorded before, 0 moved" in out
        stow = re.search(r'^(\{.*"00081199".*)\n(\d{3})$', out, re.M)
        assert stow is not None, "no STOW-RS response printed"
        assert stow.group(2) == "200", stow.group(0)
        answer = json.loads(stow.group(1))
        assert "00081198" not in answer, answer  # FailedSOPSequence: nothing failed
        assert len(answer["00081199"]["Value"]) == 2
        assert re.search(r"^pacs-1\s+stow", out, re.M) and "revoked pacs-1" in out

        # the results the README printed: study1's two films, frontal and lateral
        start = out.index("+ cxr-orient results\n")
        table = out[start : out.index("\n+ ", start + 1)]
        assert "frontal" in table and "lateral" in table, table

        # every sample study, however it came, classified; its SRs in Orthanc
        wanted = sample_sops("study1", "study2", "study3")
        pacs = f"http://127.0.0.1:{pacs_http}"

        def sr_sources_in_pacs() -> set[str]:
            found: set[str] = set()
            for orthanc_id in httpx.get(f"{pacs}/instances", timeout=30).json():
                tags = httpx.get(
                    f"{pacs}/instances/{orthanc_id}/simplified-tags", timeout=30
                ).json()
                if tags.get("SOPClassUID") == COMPREHENSIVE_SR:
                    found |= set(sr_sources(tags))
            return found

        wait_for(
            lambda: wanted <= sr_sources_in_pacs(),
            "SRs for the dcmsend, pulled and STOW-RS studies in Orthanc",
            timeout=300,
        )
        answers = json.loads(cli_in(folder, env, "results", "--format", "json").stdout)
        assert {a["sop_instance_uid"] for a in answers} == wanted
        assert {a["status"] for a in answers} == {"done"}
    finally:
        run.stop()


def test_the_review_recipe_up_to_serve(tmp_path: Path) -> None:
    """ "Reviewing answers": db upgrade, a reviewer made (the password typed at the
    prompt, twice), serve started; alice logs in on the page it serves."""
    folder = tmp_path / "operator"
    folder.mkdir()
    http_port = free_port()
    env = operator_env(CXR_HTTP_PORT=str(http_port))
    recipe = readme_block("review", through="cxr-orient serve")
    run = BlockRun(
        recipe, folder, env, tmp_path / "review.log", stdin=f"{PASSWORD}\n{PASSWORD}\n"
    ).start()
    base = f"http://127.0.0.1:{http_port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return run.process is not None and run.process.poll() is not None

        wait_for(up, "serve answering", timeout=120)
        assert run.process is not None and run.process.poll() is None, run.output()
        assert "user alice (reviewer) created" in run.output()
        with httpx.Client(base_url=base) as client:
            form = client.get("/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert csrf is not None, form.text
            login = client.post(
                "/login",
                data={"username": "alice", "password": PASSWORD, "csrf_token": csrf.group(1)},
            )
            assert login.status_code == 303, login.text
            assert client.get("/review").status_code == 200
    finally:
        run.stop()


def test_the_using_it_commands_that_run_here(tmp_path: Path, redis_url: str) -> None:
    """ "Using it" up to `requeue` (training needs data): with the README's variables set
    to a real PostgreSQL, Redis and an archive folder, the samples are enqueued and waited
    for, the CSV and the per-study answers written, the status printed."""
    folder = tmp_path / "operator"
    folder.mkdir()
    archive = tmp_path / "archive"
    for study in ("study1", "study2"):
        shutil.copytree(SAMPLES / study, archive / "2026" / "11" / study)
    with temporary_pg_database() as database_url:
        env = operator_env(
            CXR_DATABASE_URL=database_url, CXR_BROKER_URL=redis_url, CXR_INGEST_ROOT=str(archive)
        )
        run = BlockRun(
            readme_block("using-it", through="cxr-orient requeue"),
            folder,
            env,
            tmp_path / "using.log",
        ).start()
        try:
            status = run.wait(timeout=600)
            out = run.output()
            assert status == 0, out[-6000:]
            assert "all instances finished" in out
            answers = (folder / "answers.csv").read_text().splitlines()
            assert len(answers) == 5 and answers[0].startswith("sop_instance_uid,"), answers
            assert "processing 0, done 4, failed 0" in out, out[-3000:]
            assert "re-sent 0 instances" in out
        finally:
            run.stop()
