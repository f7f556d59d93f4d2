"""The C-STORE sender with a correction's objects, against real pynetdicom SCPs: the
replacement goes in its own lossless syntax (JPEG-LS here) when the peer takes it, and
uncompressed (pixels equal) when the peer takes only uncompressed; the rejection note
and the replacement share one sender, each in a context the sender proposed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless

from cxr_orient.dicomnet.corrections import (
    Correction,
    Turn,
    build_corrected_image,
    build_rejection_note,
)
from cxr_orient.dicomnet.destinations import sender_for
from cxr_orient.settings import Settings
from tests.utils.corrections import DX_STORAGE, rg1, turned_original, write_in_syntax

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
WHEN = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Dataset, Dataset]:
    folder = tmp_path_factory.mktemp("original")
    original = pydicom.dcmread(
        write_in_syntax(
            turned_original(np.asarray(rg1().pixel_array), 90, False, dx=True, view="PA"),
            JPEGLSLossless,
            folder,
        )
    )
    replacement = build_corrected_image(original, Correction(Turn(90), "PA", "test", WHEN))
    note = build_rejection_note([original], reason="turned", decided_by="test", decided_at=WHEN)
    return original, replacement, note


@contextmanager
def _scp(syntaxes: list[str]) -> Iterator[tuple[int, list[tuple[str, Any]]]]:
    from pynetdicom import AE, evt

    received: list[tuple[str, Any]] = []

    def store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append((str(event.context.transfer_syntax), ds))
        return 0x0000

    ae = AE(ae_title="PACS")
    for sop_class in (DX_STORAGE, KOS):
        ae.add_supported_context(sop_class, syntaxes)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    assert server is not None
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("accepted", "replacement_syntax"),
    [
        ([JPEGLSLossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian], JPEGLSLossless),
        ([ExplicitVRLittleEndian, ImplicitVRLittleEndian], None),
    ],
    ids=["peer-takes-jpeg-ls", "peer-takes-uncompressed-only"],
)
def test_the_replacement_goes_in_its_syntax_or_uncompressed(
    tmp_path: Path,
    objects: tuple[Dataset, Dataset, Dataset],
    accepted: list[str],
    replacement_syntax: str | None,
) -> None:
    _, replacement, note = objects
    assert replacement.file_meta.TransferSyntaxUID == JPEGLSLossless
    with _scp(accepted) as (port, received):
        sender = sender_for(f"dicom://PACS@127.0.0.1:{port}", Settings(outbox_timeout_s=10).results)
        try:
            sender.send(replacement)
            sender.send(note)
        finally:
            sender.close()
        assert [ds.SOPInstanceUID for _, ds in received] == [
            replacement.SOPInstanceUID,
            note.SOPInstanceUID,
        ]
        (syntax, got), (note_syntax, _) = received
        if replacement_syntax is not None:
            assert syntax == replacement_syntax
        else:
            assert syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert note_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert np.array_equal(got.pixel_array, replacement.pixel_array)
    assert replacement.file_meta.TransferSyntaxUID == JPEGLSLossless, "the caller's is kept"
