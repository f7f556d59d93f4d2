"""A correction stored in a real Orthanc: the original, its corrected replacement (JPEG
2000 lossless, as the original came) and the rejection note go in by C-STORE and come back
intact; Orthanc keeps all three and hides nothing (it does not implement IOCM), and the
REST recipe docs/dicom.md gives Orthanc-only sites (look the original up, delete it)
leaves the replacement alone in its place."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE

from cxr_orient.dicomnet.corrections import (
    Correction,
    Turn,
    build_corrected_image,
    build_rejection_note,
)
from tests.utils.corrections import rg1, turned_original, write_in_syntax
from tests.utils.orthanc import Orthanc, free_port, start

pytestmark = pytest.mark.integration

CALLING_AE = "CXR_ORIENT"
WHEN = datetime(2026, 12, 6, 21, 30, tzinfo=UTC)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = start(
        tmp_path / "orthanc",
        free_port(),
        free_port(),
        {"cxr": [CALLING_AE, "127.0.0.1", free_port()]},
    )
    try:
        yield server
    finally:
        server.stop()


def _c_store(orthanc: Orthanc, datasets: list[Dataset]) -> None:
    ae = AE(ae_title=CALLING_AE)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title="ORTHANC")
    assert assoc.is_established, orthanc.log_path.read_text()[-2000:]
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert status.Status == 0x0000, (ds.SOPClassUID, status)
    finally:
        assoc.release()


def _lookup(orthanc: Orthanc, sop_instance_uid: str) -> str:
    response = httpx.post(f"{orthanc.url}/tools/lookup", content=sop_instance_uid, timeout=30)
    response.raise_for_status()
    (found,) = [r for r in response.json() if r["Type"] == "Instance"]
    return str(found["ID"])


def test_orthanc_stores_the_replacement_and_the_note_and_hides_nothing(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    upright = np.asarray(rg1().pixel_array)
    original = pydicom.dcmread(
        write_in_syntax(turned_original(upright, 90, True), JPEG2000Lossless, tmp_path)
    )
    replacement = build_corrected_image(
        original, Correction(Turn(90, True), "PA", "model compact-invariant-64-v3", WHEN)
    )
    note = build_rejection_note(
        [original],
        reason="stored turned 90 degrees, mirrored",
        decided_by="model compact-invariant-64-v3",
        decided_at=WHEN,
    )
    assert replacement.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert note.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian

    _c_store(orthanc, [original, replacement, note])

    stored = {str(orthanc.instance_tags(i)["SOPInstanceUID"]): i for i in orthanc.instances()}
    assert set(stored) == {
        original.SOPInstanceUID,
        replacement.SOPInstanceUID,
        note.SOPInstanceUID,
    }, "Orthanc keeps all three: no IOCM"
    studies = orthanc.get("/studies")
    assert len(studies) == 1 and len(orthanc.get(f"/studies/{studies[0]}/series")) == 3

    back = pydicom.dcmread(
        pydicom.filebase.DicomBytesIO(orthanc.instance_file(stored[replacement.SOPInstanceUID]))
    )
    assert back.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert np.array_equal(back.pixel_array, upright)
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    tags = orthanc.instance_tags(stored[note.SOPInstanceUID])
    assert tags["ConceptNameCodeSequence"][0]["CodeValue"] == "113001"
    rejected = [
        item["ReferencedSOPInstanceUID"]
        for evidence in tags["CurrentRequestedProcedureEvidenceSequence"]
        for series in evidence["ReferencedSeriesSequence"]
        for item in series["ReferencedSOPSequence"]
    ]
    assert rejected == [original.SOPInstanceUID]

    # An Orthanc-only site applies the rejection itself through the REST API.
    orthanc_id = _lookup(orthanc, original.SOPInstanceUID)
    assert orthanc_id == stored[original.SOPInstanceUID]
    httpx.delete(f"{orthanc.url}/instances/{orthanc_id}", timeout=30).raise_for_status()
    left = {str(orthanc.instance_tags(i)["SOPInstanceUID"]) for i in orthanc.instances()}
    assert left == {replacement.SOPInstanceUID, note.SOPInstanceUID}
