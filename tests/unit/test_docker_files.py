"""docker/ checked without a Docker engine: compose parsed with PyYAML, Dockerfiles
read line by line, the entrypoint and retrain loop run with a stand-in celery.
scripts/compose-smoke.sh builds and runs all of it for real (docs/deployment.md)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cxr_orient.settings import field_groups

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
#: The local stand-ins for the public redis and postgres images (context docker/local).
LOCAL_DOCKERFILES = [
    DOCKER / "local" / "Dockerfile.redis",
    DOCKER / "local" / "Dockerfile.postgres",
]
SETTINGS_VARIABLES = {f"CXR_{name.upper()}" for name in field_groups()}
#: Compose-level inputs that are not application settings (docs/deployment.md).
COMPOSE_INPUTS = {
    "POSTGRES_PASSWORD",
    "ARCHIVE_DIR",
    "WORKER_CONCURRENCY",
    "APP_IMAGE",
    "BASE_IMAGE",
    "REDIS_IMAGE",
    "POSTGRES_IMAGE",
    "REDIS_PORT",
    "POSTGRES_PORT",
}
APP_SERVICES = ("migrate", "worker", "beat", "serve", "listen", "retrain")
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>[^}]*)\}")
ENTRYPOINT_ROLES = {"worker", "beat", "retrain-loop"}


def _defaults(text: str) -> str:
    """TEXT with every ${NAME:-default} (and ${NAME:?message}) replaced by its default."""
    return INTERPOLATION.sub(lambda m: m["rest"].removeprefix(":-"), text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def test_compose_has_every_role(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "postgres", *APP_SERVICES}


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = _defaults(service["image"])
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
    for name in APP_SERVICES:
        service = services[name]
        env = service["environment"]
        assert env["CXR_BROKER_URL"].startswith("redis://127.0.0.1:")
        assert env["CXR_DATABASE_URL"].startswith("postgresql+psycopg://")
        archive = [v for v in service["volumes"] if v.endswith(":ro")]
        assert len(archive) == 1, f"{name}: the archive must be mounted once, read-only"
        archive_at = Path(archive[0].split(":")[-2])
        assert archive_at.is_relative_to(env["CXR_INGEST_ROOT"])
        # The spool (written by listen and serve, read by workers) is a writable volume
        # under the ingest root, at the same place in every app service.
        spool = [v for v in service["volumes"] if v.split(":")[1] == env["CXR_SPOOL_DIR"]]
        assert spool and not spool[0].endswith(":ro"), f"{name}: no writable spool"
        assert Path(env["CXR_SPOOL_DIR"]).is_relative_to(env["CXR_INGEST_ROOT"])
        assert any(v.split(":")[1] == env["CXR_DATA_DIR"] for v in service["volumes"])
        assert env["CXR_MODEL_DIR"].startswith(env["CXR_DATA_DIR"])


def test_host_networking_everywhere(compose: dict[str, Any], services: dict[str, Any]) -> None:
    """No Docker bridge network is created or used: every service (and the build) is on
    the host's network, so nothing publishes ports and peers are 127.0.0.1."""
    assert "networks" not in compose
    for name, service in services.items():
        assert service.get("network_mode") == "host", f"{name}: not network_mode: host"
        assert "networks" not in service and "ports" not in service, name
        if "build" in service:
            assert service["build"]["network"] == "host", f"{name}: build not on host network"
    text = COMPOSE.read_text()
    assert "bridge" not in text.replace("no Docker bridge", "")


def test_services_meet_on_the_configured_ports(services: dict[str, Any]) -> None:
    env = services["worker"]["environment"]
    redis_port = _defaults("${REDIS_PORT:-6379}")
    assert _defaults(env["CXR_BROKER_URL"]) == f"redis://127.0.0.1:{redis_port}/0"
    assert "${REDIS_PORT:-6379}" in services["redis"]["command"]
    assert "${REDIS_PORT:-6379}" in services["redis"]["healthcheck"]["test"]
    assert "127.0.0.1:${POSTGRES_PORT:-5432}/cxr" in env["CXR_DATABASE_URL"]
    assert services["postgres"]["environment"]["PGPORT"] == "${POSTGRES_PORT:-5432}"
    # Loopback only by default: on the host's network these would face every interface.
    assert "127.0.0.1" in services["redis"]["command"]
    assert "listen_addresses=127.0.0.1" in services["postgres"]["command"]
    assert env["CXR_HTTP_HOST"] == "${CXR_HTTP_HOST:-127.0.0.1}"
    assert env["CXR_DICOM_BIND"] == "${CXR_DICOM_BIND:-127.0.0.1}"
    assert "${CXR_HTTP_PORT:-8080}/readyz" in " ".join(services["serve"]["healthcheck"]["test"])
    assert "${CXR_DICOM_PORT:-11112}" in " ".join(services["listen"]["healthcheck"]["test"])
    assert "send_c_echo" in " ".join(services["listen"]["healthcheck"]["test"])
    assert _defaults(services["migrate"]["build"]["args"]["BASE_IMAGE"]).startswith("python:3.11")


def test_worker_waits_for_healthy_services_and_migrations(services: dict[str, Any]) -> None:
    for name in ("worker", "beat", "serve", "listen", "retrain"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["restart"] == "no"
    assert "test" in services["redis"]["healthcheck"]
    assert "test" in services["postgres"]["healthcheck"]
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])
    assert "cxr-celery-node" in " ".join(services["worker"]["healthcheck"]["test"])
    for name in ("serve", "listen"):
        assert "test" in services[name]["healthcheck"], name
    for name in ("migrate", "beat", "retrain"):
        assert services[name]["healthcheck"] == {"disable": True}


def _cli_command_exists(words: list[str]) -> bool:
    import click

    from cli.main import main

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
            cli_runs += [
                (name, words) for words in _script_cli_commands(DOCKER / "retrain-loop.sh")
            ]
    assert roles == {
        "migrate": "cxr-orient",
        "worker": "worker",
        "beat": "beat",
        "serve": "cxr-orient",
        "listen": "cxr-orient",
        "retrain": "retrain-loop",
    }
    assert services["migrate"]["command"] == ["cxr-orient", "db", "upgrade"]
    assert services["serve"]["command"] == ["cxr-orient", "serve"]
    assert services["listen"]["command"] == ["cxr-orient", "listen"]
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


def _base_images(instructions: list[tuple[str, str]]) -> list[str]:
    """Each FROM's image, a ${ARG} resolved to the ARG's default (which must exist)."""
    defaults = {}
    bases = []
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name] = value
        elif keyword == "FROM":
            image = rest.split()[0]
            match = re.fullmatch(r"\$\{(\w+)\}", image)
            assert match, f"FROM {image}: the base must be a build argument (ARG BASE_IMAGE=...)"
            assert match[1] in defaults, f"FROM {image}: the ARG has no default"
            bases.append(defaults[match[1]])
    return bases


def _check_base_and_user(instructions: list[tuple[str, str]]) -> None:
    keywords = [k for k, _ in instructions]
    bases = _base_images(instructions)
    assert bases, "no FROM"
    for image in bases:
        _, _, tag = image.rpartition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"unpinned base {image}"
    assert next(rest for k, rest in instructions if k == "ARG").startswith("BASE_IMAGE=")
    users = [rest for k, rest in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "must end as a non-root user"
    # The last USER comes after the last RUN (a build may start as root, as the GPU image on
    # the project's own CPU image must, but nothing runs as root after it).
    last_user = max(i for i, k in enumerate(keywords) if k == "USER")
    assert last_user > max(i for i, k in enumerate(keywords) if k == "RUN")
    assert "ADD" not in keywords, "use COPY; never ADD (remote URLs, implicit extraction)"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_basics(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    keywords = [k for k, _ in instructions]
    _check_base_and_user(instructions)
    assert "HEALTHCHECK" in keywords and "ENTRYPOINT" in keywords
    for keyword, rest in instructions:
        if keyword == "COPY":
            sources = [w for w in rest.split() if not w.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
    ignored = (ROOT / ".dockerignore").read_text().split()
    copied = {w.split("/")[0] for k, r in instructions if k == "COPY" for w in r.split()[:-1]}
    assert not copied & set(ignored), "COPY of a path .dockerignore excludes"
    # serve and listen run from the same image: every package setuptools installs is in
    # it, and no other package of the tree (bench/ and tests/ are not the product).
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    installed = {p.rstrip("*") for p in find["packages"]["find"]["include"]}
    for package in sorted(installed):
        assert ("COPY", f"{package} ./{package}") in instructions, f"{package} not copied"
    packages = {w for w in copied if (ROOT / w / "__init__.py").is_file()}
    assert packages <= installed, f"not in the wheel, copied anyway: {packages - installed}"


@pytest.mark.parametrize("dockerfile", LOCAL_DOCKERFILES, ids=lambda p: p.name)
def test_local_service_images(dockerfile: Path) -> None:
    """The stand-ins the smoke run builds from the debootstrapped base."""
    instructions = _instructions(dockerfile)
    _check_base_and_user(instructions)
    for keyword, rest in instructions:
        if keyword == "COPY":
            for source in [w for w in rest.split() if not w.startswith("--")][:-1]:
                assert (dockerfile.parent / source).exists(), f"COPY {source}: no such path"


def test_cpu_and_gpu_images() -> None:
    cpu = _instructions(DOCKER / "Dockerfile")
    gpu = _instructions(DOCKER / "Dockerfile.gpu")
    assert _base_images(cpu)[0].startswith("python:3.11")
    assert "'.[cpu]'" not in (DOCKER / "Dockerfile").read_text()  # read from pyproject instead
    assert "['optional-dependencies']['cpu']" in (DOCKER / "Dockerfile").read_text()
    gpu_base = _base_images(gpu)[0]
    assert gpu_base.startswith("tensorflow/tensorflow:") and gpu_base.endswith("-gpu")


@pytest.mark.parametrize(
    "script", ["entrypoint.sh", "retrain-loop.sh", "local/postgres-entrypoint.sh"]
)
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

    default = run(WORKER_CONCURRENCY="3", TMPDIR=str(tmp_path))
    assert default.startswith("celery -A worker worker ")
    assert "--concurrency 3" in default
    # The node name the healthcheck pings is written down, and differs per container
    # (on host networking every container has the host's name).
    node = (tmp_path / "cxr-celery-node").read_text().strip()
    assert f"--hostname {node}" in default
    assert re.fullmatch(r"worker-[0-9a-f]{8}@\S+", node), node
    run(TMPDIR=str(tmp_path))
    assert (tmp_path / "cxr-celery-node").read_text().strip() != node
    assert run("worker", "-Q", "x", TMPDIR=str(tmp_path)).endswith("-Q x")
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


def test_smoke_script_is_valid_bash() -> None:
    script = ROOT / "scripts" / "compose-smoke.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    # It runs the compose file it ships with, every long-running role, and tears down.
    assert "docker/compose.yaml" in text
    assert "up -d --no-build migrate worker beat serve listen" in text
    assert "down -v" in text
