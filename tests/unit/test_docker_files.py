"""docker/ checked without a Docker engine: compose parsed with PyYAML, Dockerfiles
read line by line, the entrypoint and retrain loop run with a stand-in celery."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cxr_orient.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
SETTINGS_VARIABLES = {f"CXR_{name.upper()}" for name in Settings.model_fields}
#: Compose-level inputs that are not application settings (docs/deployment.md).
COMPOSE_INPUTS = {"POSTGRES_PASSWORD", "ARCHIVE_DIR", "WORKER_CONCURRENCY", "APP_IMAGE"}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>[^}]*)\}")
ENTRYPOINT_ROLES = {"worker", "beat", "retrain-loop"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def test_compose_has_every_role(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "postgres", "migrate", "worker", "beat", "retrain"}


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = INTERPOLATION.sub(lambda m: m["rest"].removeprefix(":-"), service["image"])
        repository, _, tag = image.rpartition(":")
        assert repository and tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image!r} not pinned"


def test_only_settings_and_documented_inputs_are_used() -> None:
    text = COMPOSE.read_text()
    interpolated = {m["name"] for m in INTERPOLATION.finditer(text)}
    named = set(re.findall(r"\bCXR_[A-Z0-9_]+\b", text))
    unknown_cxr = {v for v in named | interpolated if v.startswith("CXR_")} - SETTINGS_VARIABLES
    assert not unknown_cxr, f"CXR_* variables that Settings does not have: {unknown_cxr}"
    others = {v for v in interpolated if not v.startswith("CXR_")}
    assert others <= COMPOSE_INPUTS, others - COMPOSE_INPUTS
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    for name in COMPOSE_INPUTS:
        assert name in deployment, f"{name} is not documented in docs/deployment.md"


def test_no_secret_is_written_in_the_file(services: dict[str, Any]) -> None:
    app_env = services["worker"]["environment"]
    assert "${POSTGRES_PASSWORD:?" in app_env["CXR_DATABASE_URL"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    for match in re.finditer(r"://[^:/@\s]+:(?P<password>[^@\s]+)@", COMPOSE.read_text()):
        assert match["password"].startswith("${"), "a literal password in a URL"


def test_app_services_share_configuration_and_mounts(services: dict[str, Any]) -> None:
    for name in ("migrate", "worker", "beat", "retrain"):
        service = services[name]
        env = service["environment"]
        assert env["CXR_BROKER_URL"].startswith("redis://redis:")
        assert env["CXR_DATABASE_URL"].startswith("postgresql+psycopg://")
        archive = [v for v in service["volumes"] if v.endswith(":ro")]
        assert len(archive) == 1, f"{name}: the archive must be mounted once, read-only"
        assert archive[0].split(":")[-2] == env["CXR_INGEST_ROOT"]
        assert any(v.split(":")[1] == env["CXR_DATA_DIR"] for v in service["volumes"])
        assert env["CXR_MODEL_DIR"].startswith(env["CXR_DATA_DIR"])


def test_worker_waits_for_healthy_services_and_migrations(services: dict[str, Any]) -> None:
    for name in ("worker", "beat", "retrain"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["restart"] == "no"
    assert "test" in services["redis"]["healthcheck"]
    assert "test" in services["postgres"]["healthcheck"]
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])
    for name in ("migrate", "beat", "retrain"):
        assert services[name]["healthcheck"] == {"disable": True}


def _cli_command_exists(words: list[str]) -> bool:
    import click

    from cxr_orient.cli import main

    group: click.Command = main
    for word in words:
        if word.startswith("-"):
            break
        if not isinstance(group, click.Group):
            break
        sub = group.commands.get(word)
        if sub is None:
            return False
        group = sub
    return True


def _script_cli_commands(script: Path) -> list[list[str]]:
    """The words after each ``cxr-orient`` a shell script runs (comments left out)."""
    found = []
    for line in script.read_text().splitlines():
        code = line.split("#", 1)[0]
        for match in re.finditer(r"\bcxr-orient\s+([^;|&)]*)", code):
            found.append(match[1].split())
    return found


def test_the_command_check_refuses_unknown_commands() -> None:
    assert _cli_command_exists(["db", "upgrade"])
    assert not _cli_command_exists(["retrain-everything"])
    assert not _cli_command_exists(["db", "sideways"])


def test_every_service_command_exists(services: dict[str, Any]) -> None:
    roles = {}
    #: (service, the cxr-orient words it runs), directly or through its role's script
    cli_runs: list[tuple[str, list[str]]] = []
    for name, service in services.items():
        if name in ("redis", "postgres"):
            continue
        command = service["command"]
        role, args = command[0], command[1:]
        roles[name] = role
        if role == "cxr-orient":
            cli_runs.append((name, args))
        else:
            assert role in ENTRYPOINT_ROLES, f"{name}: unknown role {role!r}"
        if role == "retrain-loop":
            cli_runs += [(name, words)
                         for words in _script_cli_commands(DOCKER / "retrain-loop.sh")]
    assert roles == {
        "migrate": "cxr-orient",
        "worker": "worker",
        "beat": "beat",
        "retrain": "retrain-loop",
    }
    assert services["migrate"]["command"] == ["cxr-orient", "db", "upgrade"]
    assert ("retrain", ["retrain"]) in cli_runs, cli_runs
    for name, words in cli_runs:
        assert _cli_command_exists(words), f"{name}: cxr-orient {' '.join(words)} does not exist"


def test_celery_app_and_beat_schedule_exist() -> None:
    import worker.tasks  # noqa: F401  (registers the tasks)
    from worker.celery import app

    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert scheduled, "beat has nothing to schedule"
    assert scheduled <= set(app.tasks), scheduled - set(app.tasks)
    assert "cxr_orient.classify" in app.tasks


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_basics(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    keywords = [k for k, _ in instructions]
    bases = [rest for k, rest in instructions if k == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        image = base.split()[0]
        _, _, tag = image.rpartition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"unpinned base {image}"
    users = [rest for k, rest in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "must end as a non-root user"
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    assert "ADD" not in keywords, "use COPY; never ADD (remote URLs, implicit extraction)"
    assert "HEALTHCHECK" in keywords and "ENTRYPOINT" in keywords
    for keyword, rest in instructions:
        if keyword == "COPY":
            sources = [w for w in rest.split() if not w.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
    ignored = (ROOT / ".dockerignore").read_text().split()
    copied = {w.split("/")[0] for k, r in instructions if k == "COPY" for w in r.split()[:-1]}
    assert not copied & set(ignored), "COPY of a path .dockerignore excludes"


def test_cpu_and_gpu_images() -> None:
    cpu = dict(_instructions(DOCKER / "Dockerfile"))
    gpu = dict(_instructions(DOCKER / "Dockerfile.gpu"))
    assert cpu["FROM"].startswith("python:3.11")
    assert "'.[cpu]'" in (DOCKER / "Dockerfile").read_text()
    assert gpu["FROM"].startswith("tensorflow/tensorflow:") and gpu["FROM"].endswith("-gpu")


@pytest.mark.parametrize("script", ["entrypoint.sh", "retrain-loop.sh"])
def test_scripts_are_executable_posix_sh(script: str) -> None:
    path = DOCKER / script
    assert path.stat().st_mode & stat.S_IXUSR
    assert path.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(path)], check=True)


def _fake_celery(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "celery"
    fake.write_text('#!/bin/sh\necho "celery $*"\n')
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_entrypoint_roles(tmp_path: Path) -> None:
    env = _fake_celery(tmp_path)
    entry = str(DOCKER / "entrypoint.sh")

    def run(*args: str, **extra: str) -> str:
        result = subprocess.run(
            ["sh", entry, *args], env={**env, **extra}, capture_output=True, text=True, check=True
        )
        return result.stdout.strip()

    default = run(WORKER_CONCURRENCY="3")
    assert default.startswith("celery -A worker worker ")
    assert "--concurrency 3" in default
    assert run("worker", "-Q", "x").endswith("-Q x")
    beat = run("beat", CXR_DATA_DIR="/data")
    assert beat.startswith("celery -A worker beat ")
    assert "--schedule /data/celerybeat-schedule" in beat
    assert run("echo", "hello") == "hello"


def test_retrain_loop_refuses_a_bad_time() -> None:
    result = subprocess.run(
        ["sh", str(DOCKER / "retrain-loop.sh"), "25:99"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "HH:MM" in result.stderr
