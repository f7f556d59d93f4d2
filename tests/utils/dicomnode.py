"""Real DICOM peers for the tests: ``cxr-orient listen`` as a subprocess, a real Orthanc
with its own storage and ports, and dcmtk's ``dcmsend``/``echoscu`` as the modality.

Missing tools fail the test with the Debian package to install (CI installs them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.services import free_port
from tests.utils.worker import REPO

__all__ = [
    "ListenerProcess",
    "OrthancProcess",
    "dcmsend",
    "echoscu",
    "free_port",
    "need_tool",
    "running_listener",
    "running_orthanc",
]

PACKAGES = {"dcmsend": "dcmtk", "echoscu": "dcmtk", "Orthanc": "orthanc orthanc-dicomweb"}
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")


def need_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (apt-get install {PACKAGES.get(name, name)})")
    return found


class ListenerProcess:
    """``cxr-orient listen --port 0`` in its own process group; the port is read from its
    log line ``listening on HOST:PORT``."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.offset = log_path.stat().st_size
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "listen", "--port", "0", *args],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.port = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[self.offset :]

    def wait_ready(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"listening on [0-9.]+:(\d+)", self.log())
            if found:
                self.port = int(found.group(1))
                return self.port
            if self.process.poll() is not None:
                raise RuntimeError(f"listener exited {self.process.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise TimeoutError(f"listener not ready after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (graceful), SIGKILL after ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextmanager
def running_listener(env: dict[str, str], log_path: Path, *args: str) -> Iterator[ListenerProcess]:
    listener = ListenerProcess(env, log_path, *args)
    try:
        listener.wait_ready()
        yield listener
    finally:
        listener.stop()


def dcmsend(
    port: int,
    files: Sequence[Path],
    *,
    aet: str = "MODALITY",
    aec: str = "CXR_ORIENT",
    timeout: float = 300,
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """dcmtk's dcmsend of ``files`` (no transcoding: dcmsend's default, decompression never)."""
    command = [
        need_tool("dcmsend"),
        "-v",
        "-aet",
        aet,
        "-aec",
        aec,
        "--decompress-never",
        *extra,
        "127.0.0.1",
        str(port),
        *[str(f) for f in files],
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def echoscu(
    port: int, *, aet: str = "MODALITY", aec: str = "CXR_ORIENT"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need_tool("echoscu"), "-v", "-aet", aet, "-aec", aec, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class OrthancProcess:
    """A real Orthanc: its own storage folder, free DICOM and HTTP ports, DICOMweb on,
    authentication off, reachable from 127.0.0.1 only."""

    def __init__(self, root: Path, *, modalities: dict[str, list[object]] | None = None) -> None:
        """``modalities``: Orthanc's DicomModalities (name -> [AET, host, port])."""
        binary = need_tool("Orthanc")
        if not (ORTHANC_PLUGINS / "libOrthancDicomWeb.so").is_file():
            pytest.fail("Orthanc's DICOMweb plugin is missing (apt-get install orthanc-dicomweb)")
        root.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        config = {
            "Name": "cxr-test-pacs",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(ORTHANC_PLUGINS / "libOrthancDicomWeb.so")],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": modalities or {},
        }
        config_path = root / "orthanc.json"
        config_path.write_text(json.dumps(config), encoding="utf-8")
        self.log_path = root / "orthanc.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [binary, str(config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                self.get("/system")
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"Orthanc not ready:\n{self.log_path.read_text()[-3000:]}")

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes) -> object:
        request = urllib.request.Request(self.url + path, data=body)
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def upload(self, path: Path) -> str:
        """REST ``POST /instances``; Orthanc's id of the instance."""
        request = urllib.request.Request(
            self.url + "/instances",
            data=path.read_bytes(),
            headers={"Content-Type": "application/dicom"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        return str(answer["ID"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


@contextmanager
def running_orthanc(
    root: Path, *, modalities: dict[str, list[object]] | None = None
) -> Iterator[OrthancProcess]:
    orthanc = OrthancProcess(root, modalities=modalities)
    try:
        orthanc.wait_ready()
        yield orthanc
    finally:
        orthanc.stop()
