"""The listener's plain parts: who may call, which SOP classes and syntaxes it offers, and
the startup sweep that records what was acknowledged before a crash."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from cxr_orient.dicomnet.admission import Admission, Limits
from cxr_orient.dicomnet.listener import (
    ListenerConfig,
    accepted_transfer_syntaxes,
    caller_allowed,
    listener_sop_classes,
)
from cxr_orient.dicomnet.recorder import sweep_spool
from cxr_orient.dicomnet.spool import stale_partial_s, write_instance
from cxr_orient.imaging.decoders import SUPPORTED_TRANSFER_SYNTAXES
from cxr_orient.settings import Settings, get_settings
from tests.utils.dicom_factory import make_dicom, synthetic_pixels

CR, DX = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.mark.parametrize(
    ("title", "host", "allowed", "expected"),
    [
        ("ANY", "10.0.0.1", [], True),
        ("MOD", "10.0.0.1", [("MOD", None)], True),
        ("MOD ", "10.0.0.1", [("MOD", None)], True),
        ("OTHER", "10.0.0.1", [("MOD", None)], False),
        ("MOD", "10.0.0.1", [("MOD", "10.0.0.1")], True),
        ("MOD", "10.0.0.2", [("MOD", "10.0.0.1")], False),
    ],
    ids=["empty-any", "title", "padded", "other-title", "title-host", "other-host"],
)
def test_callers(
    title: str, host: str, allowed: list[tuple[str, str | None]], expected: bool
) -> None:
    assert caller_allowed(title, host, allowed) is expected


def test_allowed_callers_setting_is_parsed() -> None:
    settings = Settings(dicom_allowed_callers=" MOD1, PACS@10.1.2.3 ,,")
    assert settings.dicom.dicom_allowed_callers == [("MOD1", None), ("PACS", "10.1.2.3")]


@pytest.mark.parametrize("title", ["", "A" * 17, "BAD\\TITLE"])
def test_a_nonsense_ae_title_fails_fast(title: str) -> None:
    with pytest.raises(ValueError, match=r"CXR_DICOM_AE_TITLE|at most 16|at least 1"):
        Settings(dicom_ae_title=title)


def test_the_listener_offers_the_accept_policys_sop_classes() -> None:
    assert listener_sop_classes(Settings().accept) == [CR, DX, "1.2.840.10008.5.1.4.1.1.1.1.1"]
    assert listener_sop_classes(Settings(accept_sop_classes=CR).accept) == [CR]
    # The rule switched off: every storage class is offered; the other rules decide.
    everything = listener_sop_classes(Settings(accept_sop_classes="").accept)
    assert len(everything) > 100 and CR in everything
    assert "1.2.840.10008.5.1.4.1.1.2" in everything  # CT Image Storage


def test_every_decodable_syntax_is_offered_implicit_last() -> None:
    offered = accepted_transfer_syntaxes()
    assert set(offered) == set(SUPPORTED_TRANSFER_SYNTAXES)
    assert offered[-1] == ImplicitVRLittleEndian
    assert ExplicitVRLittleEndian in offered and JPEG2000Lossless in offered
    config = ListenerConfig.from_settings(Settings(), port=0, ae_title="ME")
    assert (config.port, config.ae_title, config.bind) == (0, "ME", "127.0.0.1")


def test_the_sweep_records_acknowledged_files_once_and_drops_stale_temporaries(
    migrated_db: str, tmp_path: Path, configure: Callable[..., None]
) -> None:
    configure(study_quiet_s=0)  # sent at once (the hold itself is test_studies')
    settings = get_settings()
    source = make_dicom(tmp_path / "src.dcm", synthetic_pixels((32, 32)))
    spooled = write_instance(
        source.read_bytes(),
        study_instance_uid="1.2.3",
        sop_instance_uid="1.2.3.4",
        settings=settings,
    )
    stale = spooled.path.parent / ".incoming-old.tmp"
    fresh = spooled.path.parent / ".incoming-new.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - stale_partial_s(settings) - 10
    os.utime(stale, (old, old))
    sent: list[list[int]] = []
    assert sweep_spool(settings, lambda ids: sent.append(list(ids))) == 1
    assert len(sent) == 1 and len(sent[0]) == 1
    assert not stale.exists() and fresh.exists(), "a write in progress is left alone"
    assert sweep_spool(settings, lambda ids: sent.append(list(ids))) == 0
    assert len(sent) == 1


def test_admission_counts_from_the_request_per_host_and_per_caller() -> None:
    refusals: list[str] = []
    closed: list[int] = []
    books = Admission(Limits(associations=3, per_host=2, per_caller=1, pending=2), refusals.append)
    for key in range(3):  # three bare connections: the oldest is closed at the third
        books.opened(key, "10.0.0.9", functools.partial(closed.append, key))
    assert closed == [0] and refusals == ["pending_evicted"]
    assert books.counts() == (2, 0), "pending connections are not associations"
    assert books.requested(1, "10.0.0.1", "MOD") is None
    assert books.requested(2, "10.0.0.1", "MOD") == "per_caller"
    assert books.requested(3, "10.0.0.1", "OTHER") is None
    assert books.requested(4, "10.0.0.1", "THIRD") == "per_host"
    assert books.requested(5, "10.0.0.2", "FOURTH") is None
    assert books.requested(6, "10.0.0.3", "FIFTH") == "associations"
    books.closed(1)
    assert books.requested(7, "10.0.0.1", "MOD") is None, "a slot freed is taken again"
    books.opened(8, "10.0.0.4", lambda: None)
    books.closed(8)  # gave up (or timed out) before its request
    assert refusals == [
        "pending_evicted",
        "per_caller",
        "per_host",
        "associations",
        "no_association_request",
    ]
