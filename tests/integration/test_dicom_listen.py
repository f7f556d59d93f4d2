"""``cxr-orient listen`` against a real modality: dcmtk's ``echoscu`` and ``dcmsend``
talking to the real listener process, a real worker classifying what it received."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation as DX,
)
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from tests.utils.corpus import film_dicom, rg1_dicom
from tests.utils.dicom_factory import COVID_CXR, make_dicom, synthetic_pixels
from tests.utils.dicomnode import (
    dcmsend,
    echoscu,
    free_port,
    need_tool,
    running_listener,
    running_orthanc,
)
from tests.utils.worker import running_worker, worker_env

pytestmark = pytest.mark.integration


def make_node(url: str, tmp_path: Path, configure: Callable[..., None]) -> dict[str, str]:
    """A migrated database, the filesystem broker, the ingest root: the env every
    process of the test shares (this process reads the same database)."""
    from tests.utils.env import migrate_from_template

    values = {
        "database_url": url,
        "ingest_root": tmp_path,
        "data_dir": tmp_path / "data",
        "spool_min_free_mb": 1,
    }
    (tmp_path / "data").mkdir()
    configure(**values)
    migrate_from_template(url)
    return worker_env(**values)


@pytest.fixture
def node(tmp_path: Path, configure: Callable[..., None]) -> dict[str, str]:
    return make_node(f"sqlite:///{tmp_path / 'cxr.db'}", tmp_path, configure)


@pytest.fixture
def pg_node(pg_url: str, tmp_path: Path, configure: Callable[..., None]) -> dict[str, str]:
    return make_node(pg_url, tmp_path, configure)


def rows() -> list[dict[str, object]]:
    from db import crud
    from db.session import session_scope

    with session_scope() as session:
        return [row.as_dict() for row in crud.results(session)]


def wait_rows(count: int, timeout: float = 60) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        found = rows()
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def spooled(root: Path) -> list[Path]:
    return sorted((root / "spool").glob("*/*.dcm"))


def partials(root: Path) -> list[Path]:
    """Partial files under the spool: a write or a transfer in progress (or left)."""
    spool = root / "spool"
    return [*spool.glob("*/.incoming-*.tmp"), *spool.glob(".receiving/.receiving-*.tmp")]


def dataset_bytes(path: Path) -> bytes:
    """A DICOM file's bytes after its file meta (explicit VR LE group 2 with its group
    length first): what the sender sent over the network."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    assert data[132:136] == b"\x02\x00\x00\x00", "file meta must start with its group length"
    (length,) = struct.unpack("<I", data[140:144])
    return data[144 + length :]


def small(path: Path, **kwargs: Any) -> Path:
    """A small synthetic radiograph (speed: these tests are about the network)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_dicom(path, synthetic_pixels((64, 64)), **kwargs)


def test_echo_and_callers_outside_the_allowed_list_are_rejected(
    node: dict[str, str], tmp_path: Path
) -> None:
    env = {**node, "CXR_DICOM_ALLOWED_CALLERS": "MODALITY, OTHER@10.9.9.9"}
    source = small(tmp_path / "src" / "a.dcm")
    with running_listener(env, tmp_path / "listen.log") as listener:
        assert echoscu(listener.port).returncode == 0
        stranger = echoscu(listener.port, aet="STRANGER")
        # OTHER is allowed from 10.9.9.9 only; we call from 127.0.0.1.
        wrong_host = echoscu(listener.port, aet="OTHER")
        sent = dcmsend(listener.port, [source], aet="STRANGER")
    assert stranger.returncode != 0 and "Rejected" in stranger.stdout + stranger.stderr
    assert wrong_host.returncode != 0
    assert sent.returncode != 0
    assert not spooled(tmp_path) and not rows()
    log = listener.log()
    assert "STRANGER@127.0.0.1 rejected" in log
    assert "1.2.826" not in log, "no UIDs in the log"


@pytest.mark.skipif(not COVID_CXR.is_dir(), reason="needs the real films in ../shared/data")
def test_a_frontal_and_lateral_study_is_recorded_and_classified(
    node: dict[str, str], tmp_path: Path
) -> None:
    study = "1.2.826.0.1.3680043.10.77.1"
    files = [
        rg1_dicom(tmp_path / "src" / "frontal.dcm", study_uid=study),
        film_dicom(tmp_path / "src" / "lateral.dcm", view="lateral", study_uid=study),
    ]
    with (
        running_worker(node, tmp_path / "worker.log"),
        running_listener(node, tmp_path / "listen.log") as listener,
    ):
        sent = dcmsend(listener.port, files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = rows()
            if len(found) == 2 and all(r["status"] == "done" for r in found):
                break
            time.sleep(0.5)
    assert len(found) == 2, found
    assert {r["study_instance_uid"] for r in found} == {study}
    by_label = sorted(str(r["label"]) for r in found)
    assert by_label == ["frontal", "lateral"], found
    for path in spooled(tmp_path):
        assert str(path) in {r["file_path"] for r in found}


def test_a_spool_disk_under_the_threshold_refuses_with_a700(
    node: dict[str, str], tmp_path: Path
) -> None:
    env = {**node, "CXR_SPOOL_MIN_FREE_MB": str(10**12)}
    source = small(tmp_path / "src" / "a.dcm")
    with running_listener(env, tmp_path / "listen.log") as listener:
        sent = dcmsend(listener.port, [source])
    out = sent.stdout + sent.stderr
    assert "Received C-STORE Response (Refused: OutOfResources)" in out, out
    assert not spooled(tmp_path) and not rows()
    assert "(A700)" in listener.log()


def test_an_unreadable_dataset_gets_a_failure_status_and_a_recorded_reason(
    node: dict[str, str], tmp_path: Path
) -> None:
    import pydicom

    source = small(tmp_path / "src" / "no-study.dcm")
    ds = pydicom.dcmread(source)
    del ds.StudyInstanceUID
    ds.save_as(source)
    good = small(tmp_path / "src" / "good.dcm")
    with running_listener(node, tmp_path / "listen.log") as listener:
        sent = dcmsend(listener.port, [source, good])
        found = wait_rows(2)
        assert listener.process.poll() is None, "the listener must survive bad input"
    out = sent.stdout + sent.stderr
    assert "C-STORE Response (Error: CannotUnderstand)" in out, out
    assert out.count("C-STORE Response (Success)") == 1, out
    assert len(found) == 2, found
    failed = [r for r in found if r["status"] == "failed"]
    assert len(failed) == 1 and str(failed[0]["error"]).startswith("missing_attribute"), found


def test_killed_mid_association_nothing_half_recorded_and_the_resend_is_accepted_once(
    node: dict[str, str], tmp_path: Path
) -> None:
    sources = [
        rg1_dicom(tmp_path / "src" / f"{k:02d}.dcm", study_uid=f"1.2.826.0.1.9.{k % 3}")
        for k in range(30)
    ]
    truth = {dataset_bytes(p) for p in sources}
    with running_listener(node, tmp_path / "listen.log") as listener:
        sender = subprocess.Popen(
            [
                need_tool("dcmsend"),
                "-aet",
                "MODALITY",
                "-aec",
                "CXR_ORIENT",
                "127.0.0.1",
                str(listener.port),
                *map(str, sources),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while len(spooled(tmp_path)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        listener.kill()
        sender.wait(timeout=60)
    assert sender.returncode != 0, "the sender must see the association die"
    acknowledged = spooled(tmp_path)
    assert 3 <= len(acknowledged) < 30, len(acknowledged)
    # Every file in the spool is whole (temporaries are hidden and never recorded) ...
    for path in acknowledged:
        assert dataset_bytes(path) in truth
    # ... and every row names a whole spooled file.
    for row in rows():
        assert Path(str(row["file_path"])) in acknowledged
    with running_listener(node, tmp_path / "listen.log") as listener:
        resent = dcmsend(listener.port, sources)
        assert resent.returncode == 0, resent.stdout + resent.stderr
        found = wait_rows(30)
        time.sleep(1)
        found = rows()
    assert len(found) == 30, "each instance recorded once"
    assert len({r["sop_instance_uid"] for r in found}) == 30
    assert len(spooled(tmp_path)) == 30
    # Held for their study's quiet period (CXR_STUDY_QUIET_S), then queued by the listener.
    assert {r["status"] for r in found} <= {"waiting", "queued"}


@pytest.mark.parametrize("database", ["node", "pg_node"], ids=["sqlite", "postgresql"])
def test_100_instances_from_4_concurrent_senders_are_each_recorded_once(
    database: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    node: dict[str, str] = request.getfixturevalue(database)
    sources = [
        small(
            tmp_path / "src" / f"{k:03d}.dcm",
            study_uid=f"1.2.826.0.1.8.{k % 10}",
            modality="CR" if k % 2 else "DX",
        )
        for k in range(100)
    ]
    with running_listener(node, tmp_path / "listen.log") as listener:
        senders = [
            subprocess.Popen(
                [
                    need_tool("dcmsend"),
                    "-aet",
                    f"MOD{n}",
                    "-aec",
                    "CXR_ORIENT",
                    "127.0.0.1",
                    str(listener.port),
                    *map(str, sources[n::4]),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for n in range(4)
        ]
        for sender in senders:
            out, _ = sender.communicate(timeout=120)
            assert sender.returncode == 0, out
        found = wait_rows(100)
        time.sleep(0.5)
        found = rows()
        assert listener.stop() == 0, "SIGTERM is a clean stop"
    assert len(found) == 100
    assert len({r["sop_instance_uid"] for r in found}) == 100
    assert len(spooled(tmp_path)) == 100
    log = listener.log()
    assert "stopped: 100 instances stored, 100 recorded" in log, log
    assert "1.2.826" not in log and "/spool/" not in log, "no UIDs or paths in the log"


def rewrapped(name: str, path: Path) -> Path:
    """A pydicom-data file as a DX instance with new UIDs, its pixel data untouched."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

    found = get_testdata_file(name)
    assert isinstance(found, str), f"pydicom-data's {name} is not installed"
    ds = pydicom.dcmread(found)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "DX"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1], ids=lambda s: s.name
)
def test_compressed_syntaxes_are_stored_as_sent(
    node: dict[str, str], tmp_path: Path, syntax: str
) -> None:
    if syntax == JPEGLosslessSV1:  # pydicom has no encoder for it: pydicom-data's file
        source = rewrapped("JPGLosslessP14SV1_1s_1f_8b.dcm", tmp_path / "src" / "c.dcm")
    else:
        source = small(tmp_path / "src" / "c.dcm", transfer_syntax=syntax)
    with running_listener(node, tmp_path / "listen.log") as listener:
        sent = dcmsend(listener.port, [source])
        assert sent.returncode == 0, sent.stdout + sent.stderr
        found = wait_rows(1)
    (stored,) = spooled(tmp_path)
    assert dataset_bytes(stored) == dataset_bytes(source), "no transcoding"
    import pydicom

    assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == syntax
    assert len(found) == 1 and found[0]["file_path"] == str(stored)


def test_orthanc_routes_a_study_to_the_listener(node: dict[str, str], tmp_path: Path) -> None:
    """docs/dicom.md's route: Orthanc declares us in DicomModalities and stores to us
    (its AE title is the one allowed)."""
    env = {**node, "CXR_DICOM_ALLOWED_CALLERS": "ORTHANC@127.0.0.1"}
    files = [
        small(
            tmp_path / "src" / f"{k}.dcm", study_uid="1.2.826.0.1.5.1", transfer_syntax=RLELossless
        )
        for k in range(2)
    ]
    with (
        running_listener(env, tmp_path / "listen.log") as listener,
        running_orthanc(
            tmp_path / "orthanc",
            modalities={"cxr-orient": ["CXR_ORIENT", "127.0.0.1", listener.port]},
        ) as orthanc,
    ):
        for path in files:
            orthanc.upload(path)
        studies = orthanc.get("/studies")
        assert isinstance(studies, list) and len(studies) == 1
        orthanc.post("/modalities/cxr-orient/store", str(studies[0]).encode())
        found = wait_rows(2)
    assert len(found) == 2 and {r["study_instance_uid"] for r in found} == {"1.2.826.0.1.5.1"}
    assert {dataset_bytes(p) for p in spooled(tmp_path)} == {dataset_bytes(p) for p in files}


def test_associations_beyond_the_maximum_are_rejected(node: dict[str, str], tmp_path: Path) -> None:
    from pynetdicom import AE

    env = {**node, "CXR_DICOM_MAX_ASSOCIATIONS": "1"}
    with running_listener(env, tmp_path / "listen.log") as listener:
        scu = AE(ae_title="HOLDER")
        scu.add_requested_context("1.2.840.10008.1.1")
        held = scu.associate("127.0.0.1", listener.port, ae_title="CXR_ORIENT")
        try:
            assert held.is_established
            time.sleep(0.3)
            second = echoscu(listener.port)
        finally:
            held.release()
        time.sleep(0.5)
        after = echoscu(listener.port)
    assert second.returncode != 0, second.stdout + second.stderr
    assert after.returncode == 0, "the slot is free again once the first is released"


def test_an_instance_larger_than_the_worker_accepts_is_refused(
    node: dict[str, str], tmp_path: Path
) -> None:
    # CXR_MAX_PIXELS=1: the bound is 64 MiB + 2 bytes; a 6000 x 6000 16-bit image is 72 MB.
    env = {**node, "CXR_MAX_PIXELS": "1"}
    (tmp_path / "src").mkdir()
    source = make_dicom(tmp_path / "src" / "big.dcm", np.zeros((6000, 6000), dtype=np.uint16))
    with running_listener(env, tmp_path / "listen.log") as listener:
        sent = dcmsend(listener.port, [source])
        assert listener.process.poll() is None
    # Cut off as soon as the P-DATA passes the bound: the association is aborted, the
    # rest never read (test_an_oversize_c_store_is_cut_off_early measures it).
    out = sent.stdout + sent.stderr
    assert sent.returncode != 0 and "C-STORE Response (Success)" not in out, out
    assert "refused (too_large)" in listener.log()
    assert not spooled(tmp_path) and not rows()
    assert not partials(tmp_path), "the partial dataset is deleted"


def test_instances_acknowledged_while_the_database_is_down_are_recorded_when_it_is_back(
    tmp_path: Path, configure: Callable[..., None]
) -> None:
    from tests.utils.faults import private_postgres

    files = [small(tmp_path / "src" / f"{k}.dcm") for k in range(3)]
    with private_postgres() as pg:
        env = make_node(pg.create_database("cxr"), tmp_path, configure)
        with running_listener(env, tmp_path / "listen.log") as listener:
            pg.stop()
            sent = dcmsend(listener.port, files)
            time.sleep(1.5)
            assert "spooled instances failed (OperationalError); retrying" in (listener.log()), (
                listener.log()
            )
            pg.start()
            found = wait_rows(3, timeout=60)
            time.sleep(0.5)
            log = listener.log()
    # The instances that came while it was down joined the retried batch.
    assert "recorded 3 received instances: 3 new" in log, log
    out = sent.stdout + sent.stderr
    assert out.count("C-STORE Response (Success)") == 3, "durable in the spool: acknowledged"
    # Held for their study's quiet period (CXR_STUDY_QUIET_S), then queued by the listener.
    assert len(found) == 3 and {r["status"] for r in found} <= {"waiting", "queued"}


# --- what idle, slow, oversize and cut-off peers can no longer do (issue 19) -------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def refused(metrics: str, reason: str) -> float:
    found = re.search(rf'cxr_orient_dicom_refused_total{{reason="{reason}"}} (\S+)', metrics)
    return float(found.group(1)) if found else 0.0


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found, status
    return int(found.group(1)) / 1024


@contextmanager
def peak_rss(pid: int) -> Iterator[dict[str, float]]:
    """The process's resident set, read from /proc every 10 ms while the block runs:
    ``before`` and ``peak`` in MiB."""
    seen = {"before": rss_mib(pid), "peak": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen["peak"] = max(seen["peak"], rss_mib(pid))
            done.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        done.set()
        sampler.join()


@pytest.mark.parametrize(
    ("titles", "admitted", "reason"),
    [
        (["HOLDER"] * 8, 4, "per_caller"),
        ([f"HOLDER{k}" for k in range(8)], 6, "per_host"),
    ],
    ids=["one-calling-ae", "eight-calling-aes"],
)
def test_idle_sockets_and_idle_associations_do_not_keep_a_modality_out(
    node: dict[str, str], tmp_path: Path, titles: list[str], admitted: int, reason: str
) -> None:
    """20 connections that never send an A-ASSOCIATE-RQ (from 127.0.0.3) and 8 idle
    C-ECHO associations (from 127.0.0.2) held open; the modality (127.0.0.1) is stored
    at once. Before: the first 8 of either refused every modality for 30 s / 60 s."""
    from pynetdicom import AE

    metrics = free_port()
    env = {**node, "CXR_DICOM_METRICS_PORT": str(metrics)}
    source = small(tmp_path / "src" / "a.dcm")
    with running_listener(env, tmp_path / "listen.log") as listener:
        idle = []
        for _ in range(20):
            sock = socket.socket()
            sock.bind(("127.0.0.3", 0))
            sock.connect(("127.0.0.1", listener.port))
            idle.append(sock)
        held = []
        for title in titles:
            scu = AE(ae_title=title)
            scu.add_requested_context("1.2.840.10008.1.1")
            held.append(
                scu.associate(
                    "127.0.0.1", listener.port, ae_title="CXR_ORIENT", bind_address=("127.0.0.2", 0)
                )
            )
        established = sum(assoc.is_established for assoc in held)
        try:
            started = time.monotonic()
            sent = dcmsend(listener.port, [source], timeout=60)
            took = time.monotonic() - started
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert took < 10, f"the modality waited {took:.1f} s"
            found = wait_rows(1)
            counted = scrape(metrics)
        finally:
            for assoc in held:
                if assoc.is_established:
                    assoc.release()
            for sock in idle:
                sock.close()
    assert len(found) == 1
    assert established == admitted
    log = listener.log()
    assert log.count(f"refused ({reason})") == 8 - admitted, log
    assert "refused (rejected)" not in log, "each refusal counted once, by our limit"
    # CXR_DICOM_MAX_PENDING=16: the 17th to 20th idle sockets closed the oldest four, the
    # first HOLDER connection (17 waiting again for a moment) one more.
    assert log.count("refused (pending_evicted)") == 5, log
    assert refused(counted, reason) == 8 - admitted
    assert refused(counted, "pending_evicted") == 5


def test_silent_connections_and_associations_are_cut_off_by_their_timeouts(
    node: dict[str, str], tmp_path: Path
) -> None:
    """A connection that never sends its A-ASSOCIATE-RQ, one that stalls inside a PDU,
    one that trickles a PDU a byte at a time, and an association that goes silent are
    closed after CXR_DICOM_ACSE_TIMEOUT_S / CXR_DICOM_IDLE_TIMEOUT_S (before: 30 s and
    60 s, unlogged)."""
    from pynetdicom import AE

    metrics = free_port()
    env = {
        **node,
        "CXR_DICOM_METRICS_PORT": str(metrics),
        "CXR_DICOM_ACSE_TIMEOUT_S": "1",
        "CXR_DICOM_IDLE_TIMEOUT_S": "2",
    }
    with running_listener(env, tmp_path / "listen.log") as listener:
        bare = socket.create_connection(("127.0.0.1", listener.port))
        stalled = socket.create_connection(("127.0.0.1", listener.port))
        stalled.sendall(b"\x01\x00\x00\x00\x01\x00")  # an A-ASSOCIATE-RQ of 256 bytes, begun
        trickling = socket.create_connection(("127.0.0.1", listener.port))
        trickling.sendall(b"\x01\x00\x00\x00\x01\x00")
        stop_trickling = threading.Event()

        def trickle() -> None:  # a byte every 0.5 s: never silent for 2 s, never done
            with contextlib.suppress(OSError):
                while not stop_trickling.wait(0.5):
                    trickling.sendall(b"\x00")

        threading.Thread(target=trickle, daemon=True).start()
        scu = AE(ae_title="IDLER")
        scu.add_requested_context("1.2.840.10008.1.1")
        quiet = scu.associate("127.0.0.1", listener.port, ae_title="CXR_ORIENT")
        assert quiet.is_established
        started = time.monotonic()
        for sock in (bare, stalled, trickling):
            sock.settimeout(15)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(64) in (b"", b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        closed_after = time.monotonic() - started
        stop_trickling.set()
        for sock in (bare, stalled, trickling):
            sock.close()
        deadline = time.monotonic() + 15
        while quiet.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
        aborted_after = time.monotonic() - started
        time.sleep(0.5)
        counted = scrape(metrics)
    assert closed_after < 8, closed_after
    assert quiet.is_aborted and aborted_after < 10, aborted_after
    log = listener.log()
    assert log.count("refused (no_association_request)") == 3, log
    assert "refused (idle_timeout): association from IDLER@127.0.0.1 aborted" in log, log
    assert refused(counted, "no_association_request") == 3
    assert refused(counted, "idle_timeout") == 1


def test_a_large_c_store_is_received_on_disk_and_an_oversize_one_cut_off_early(
    node: dict[str, str], tmp_path: Path
) -> None:
    """The listener's resident memory, read from /proc while it receives: a 98 MB
    instance is written to disk as it arrives (before: the dataset in memory twice, a
    300 MB one took the listener from 133 to 460 MB), and a 288 MB one, over the bound
    (CXR_MAX_PIXELS=20,000,000: 107 MB), is aborted when the bound is passed."""
    env = {**node, "CXR_MAX_PIXELS": "20000000"}
    (tmp_path / "src").mkdir()
    large = make_dicom(tmp_path / "src" / "large.dcm", np.ones((7000, 7000), np.uint16))
    oversize = make_dicom(tmp_path / "src" / "over.dcm", np.ones((12000, 12000), np.uint16))
    with running_listener(env, tmp_path / "listen.log") as listener:
        assert echoscu(listener.port).returncode == 0
        pid = listener.process.pid
        with peak_rss(pid) as storing:
            sent = dcmsend(listener.port, [large])
            found = wait_rows(1)
        with peak_rss(pid) as cutting:
            cut = dcmsend(listener.port, [oversize])
            time.sleep(0.5)
        assert listener.process.poll() is None
    print(
        f"\nlistener RSS, 98 MB C-STORE: {storing['before']:.0f} -> {storing['peak']:.0f} MiB;"
        f" 288 MB refused: {cutting['before']:.0f} -> {cutting['peak']:.0f} MiB"
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert len(found) == 1 and dataset_bytes(Path(str(found[0]["file_path"]))) == (
        dataset_bytes(large)
    )
    assert storing["peak"] - storing["before"] < 40, storing
    assert cutting["peak"] - cutting["before"] < 40, cutting
    out = cut.stdout + cut.stderr
    assert cut.returncode != 0 and "C-STORE Response (Success)" not in out, out
    aborted = re.search(
        r"refused \(too_large\): .*aborted after (\d+) dataset bytes", listener.log()
    )
    assert aborted, listener.log()
    bound = 2 * 20_000_000 + (64 << 20)
    assert bound < int(aborted.group(1)) <= bound + 2 * (4 << 20), "cut off at the bound"
    assert len(spooled(tmp_path)) == 1 and not partials(tmp_path)


def cut_files(folder: Path) -> dict[str, Path]:
    """Instances cut short four ways, each a file whose bytes go on the wire as they are:
    native pixel data shorter than Rows x Columns needs (the element's length says so
    too), a native PixelData declaring 4 GB, encapsulated pixel data without its
    sequence delimiter, and one cut inside a fragment."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    short = small(folder / "short.dcm")
    ds = pydicom.dcmread(short)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(short)
    whole = small(folder / "whole.dcm").read_bytes()
    at = whole.rindex(b"\xe0\x7f\x10\x00OW\x00\x00") + 8
    huge = folder / "huge-length.dcm"
    huge.write_bytes(whole[:at] + struct.pack("<I", 0xFFFFFFF0) + whole[at + 4 :])
    rle = small(folder / "rle.dcm", transfer_syntax=RLELossless).read_bytes()
    no_delimiter = folder / "no-delimiter.dcm"
    no_delimiter.write_bytes(rle[:-8])
    fragment = folder / "fragment-cut.dcm"
    fragment.write_bytes(rle[:-100])
    return {
        "native-short": short,
        "native-4gb-length": huge,
        "encapsulated-no-delimiter": no_delimiter,
        "encapsulated-fragment-cut": fragment,
    }


def test_an_instance_cut_short_gets_a_failure_status_not_success(
    node: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cut instance is refused at C-STORE time (C210, its code), so the modality
    keeps it and sends it again, and is recorded failed with the reason; before: 0000
    Success, then ``failed truncated`` where nobody resends. The bytes go on the wire
    unparsed (pynetdicom's SCU sends the file's dataset as it is); dcmsend sends the
    native one."""
    from pynetdicom import AE, _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    files = cut_files(tmp_path / "src")
    good = small(tmp_path / "src" / "good.dcm")
    with running_listener(node, tmp_path / "listen.log") as listener:
        by_dcmsend = dcmsend(listener.port, [files["native-short"], good])
        scu = AE(ae_title="MODALITY")
        scu.add_requested_context(DX, ExplicitVRLittleEndian)
        scu.add_requested_context(DX, RLELossless)
        assoc = scu.associate("127.0.0.1", listener.port, ae_title="CXR_ORIENT")
        assert assoc.is_established
        try:
            statuses = {name: assoc.send_c_store(path) for name, path in files.items()}
        finally:
            assoc.release()
        found = wait_rows(5)  # the good one, the four cut ones
        time.sleep(0.5)
        found = rows()
    out = by_dcmsend.stdout + by_dcmsend.stderr
    assert "C-STORE Response (Error: CannotUnderstand)" in out, out
    assert out.count("C-STORE Response (Success)") == 1, out
    for name, status in statuses.items():
        assert status.Status == 0xC210, (name, status)
        assert str(status.ErrorComment).startswith("truncated"), (name, status)
    failed = [r for r in found if r["status"] == "failed"]
    # The short native one twice: by dcmsend and by the SCU, the same bytes: one row.
    assert len(failed) == 4, found
    assert {str(r["error"]).split(":")[0] for r in failed} == {"truncated"}, failed
    assert not partials(tmp_path)


def test_a_transfer_cut_off_by_a_killed_sender_or_listener_leaves_no_partial(
    node: dict[str, str], tmp_path: Path
) -> None:
    """kill -9 of dcmsend mid-transfer: the partial dataset goes when the association
    ends. kill -9 of the listener mid-transfer: its partial goes at the next start once
    stale (and at the periodic purge, tests/unit/cxr_orient/dicomnet/test_retention.py),
    never recorded."""
    from cxr_orient.dicomnet.spool import stale_partial_s
    from cxr_orient.settings import get_settings

    (tmp_path / "src").mkdir()
    large = make_dicom(tmp_path / "src" / "large.dcm", np.ones((7000, 7000), np.uint16))

    def send_and_wait_for_a_partial(port: int) -> subprocess.Popen[str]:
        sender = subprocess.Popen(
            [
                need_tool("dcmsend"),
                "-aet",
                "MODALITY",
                "-aec",
                "CXR_ORIENT",
                "127.0.0.1",
                str(port),
                str(large),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 10 << 20 for p in partials(tmp_path)):
            assert time.monotonic() < deadline, "no transfer under way"
            time.sleep(0.01)
        return sender

    with running_listener(node, tmp_path / "listen.log") as listener:
        sender = send_and_wait_for_a_partial(listener.port)
        sender.kill()
        sender.wait()
        deadline = time.monotonic() + 10
        while partials(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not partials(tmp_path), "deleted when the association ended"
        assert "ended mid-transfer: partial dataset deleted" in listener.log()
        assert listener.process.poll() is None

    with running_listener(node, tmp_path / "listen.log") as listener:
        sender = send_and_wait_for_a_partial(listener.port)
        listener.kill()
        sender.wait(timeout=60)
    (left,) = partials(tmp_path)
    with running_listener(node, tmp_path / "listen.log"):
        assert left.exists(), "a fresh partial may be another listener's transfer"
    old = time.time() - stale_partial_s(get_settings()) - 1
    os.utime(left, (old, old))
    with running_listener(node, tmp_path / "listen.log"):
        assert not left.exists(), "stale: removed by the start's sweep"
    assert not spooled(tmp_path) and not rows()
