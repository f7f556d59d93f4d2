"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) as a PACS, for the tests and
for ``python -m bench`` (the end-to-end network figure).

Self-contained and general: :func:`start` writes a config of its own (storage under the
given folder, the given DICOM and HTTP ports, DICOMweb on, authentication off on
127.0.0.1, the given modalities allowed to store), starts ``Orthanc`` and waits for its
REST API; :meth:`Orthanc.stop` stops it; a restart on the same folder keeps what it
stored. :meth:`Orthanc.get` / :meth:`Orthanc.post` speak to its REST API;
:meth:`Orthanc.structured_reports` and :func:`sr_sources` read back the SRs it holds.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.services import free_port

__all__ = [
    "COMPREHENSIVE_SR",
    "DICOMWEB_PLUGIN",
    "Orthanc",
    "OrthancMissingError",
    "free_port",
    "orthanc_binary",
    "sr_sources",
    "start",
]

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AE_TITLE = "ORTHANC"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


class OrthancMissingError(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed."""


def orthanc_binary() -> str:
    """The Orthanc executable; :class:`OrthancMissingError` naming the Debian packages."""
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(binary).exists() or not DICOMWEB_PLUGIN.exists():
        raise OrthancMissingError(
            "Orthanc with its DICOMweb plugin is missing (apt-get install orthanc orthanc-dicomweb)"
        )
    return binary


@dataclass
class Orthanc:
    folder: Path
    dicom_port: int
    http_port: int
    #: name -> [AE title, host, port] (Orthanc's DicomModalities).
    modalities: dict[str, list[Any]]
    #: With the DICOMweb plugin loaded (False: /dicom-web answers 404, as a PACS without it).
    dicomweb: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_root(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.folder / "orthanc.log"

    def config(self) -> dict[str, Any]:
        return {
            "Name": "cxr-orient-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "DicomAet": AE_TITLE,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": False,
            "DicomModalities": self.modalities,
            "Plugins": [str(DICOMWEB_PLUGIN)] if self.dicomweb else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1,
            "HttpTimeout": 30,
        }

    def start(self, timeout: float = 60) -> None:
        """Start (or restart) Orthanc on this folder; return once its REST API answers."""
        binary = orthanc_binary()
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [binary, str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self.process.returncode}:\n"
                    + self.log_path.read_text(errors="replace")[-3000:]
                )
            try:
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(
            f"Orthanc not up after {timeout}s:\n"
            + self.log_path.read_text(errors="replace")[-3000:]
        )

    def stop(self, timeout: float = 30) -> None:
        """Stop Orthanc (SIGTERM, SIGKILL after ``timeout``); its storage stays."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any) -> Any:
        response = httpx.post(f"{self.url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        return list(self.get("/instances"))

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        """``/instances/{id}/simplified-tags``: keyword -> value (sequences as lists)."""
        return dict(self.get(f"/instances/{orthanc_id}/simplified-tags"))

    def instance_file(self, orthanc_id: str) -> bytes:
        """``/instances/{id}/file``: the stored DICOM file, as Orthanc holds it."""
        response = httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30)
        response.raise_for_status()
        return response.content

    def structured_reports(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """SOPInstanceUID -> (Orthanc id, simplified tags) of every Comprehensive SR stored."""
        found = {}
        for orthanc_id in self.instances():
            tags = self.instance_tags(orthanc_id)
            if tags.get("SOPClassUID") == COMPREHENSIVE_SR:
                found[str(tags["SOPInstanceUID"])] = (orthanc_id, tags)
        return found


def sr_sources(tags: dict[str, Any]) -> list[str]:
    """The SOPInstanceUIDs an SR's CurrentRequestedProcedureEvidenceSequence references
    (Orthanc's simplified tags)."""
    return [
        str(item["ReferencedSOPInstanceUID"])
        for evidence in tags["CurrentRequestedProcedureEvidenceSequence"]
        for series in evidence["ReferencedSeriesSequence"]
        for item in series["ReferencedSOPSequence"]
    ]


def start(
    folder: Path, dicom_port: int, http_port: int, modalities: dict[str, list[Any]] | None = None
) -> Orthanc:
    """A running Orthanc storing under ``folder``; ``modalities`` (name -> [AE, host,
    port]) are the callers allowed to store, query and retrieve."""
    orthanc = Orthanc(folder, dicom_port, http_port, modalities or {})
    orthanc.start()
    return orthanc
