"""The corrected replacement and the rejection note on real pixels: RG1 (a real CR chest
PA, MONOCHROME1, 15 bits) and the demo samples, in several transfer syntaxes, every pose;
the replacement's decoded pixels equal the original's turned back, and dciodvfy finds no
error in either object that the original did not already have."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from cxr_orient.dicomnet.corrections import (
    REJECTED_FOR_QUALITY_REASONS,
    SOURCE_FOR_PROCESSING,
    Correction,
    CorrectionError,
    Turn,
    build_corrected_image,
    build_rejection_note,
    corrected_instance_uid,
    corrected_series_uid,
    upright_pixels,
)
from cxr_orient.dicomnet.policy import check_policy
from cxr_orient.errors import (
    MissingAttributeError,
    NoPixelDataError,
    UnsupportedImageError,
)
from cxr_orient.imaging import read_header
from cxr_orient.settings import Settings
from tests.utils.corrections import CR_STORAGE, rg1, stored_as, turned_original, write_in_syntax
from tests.utils.dciodvfy import dciodvfy

if TYPE_CHECKING:
    from cxr_orient.modelstore import Classifier

SAMPLES = Path(__file__).resolve().parents[4] / "cxr_orient" / "samples"
WHEN = datetime(2026, 12, 6, 21, 30, 5, tzinfo=UTC)
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
POSES = [(r, m) for r in (0, 90, 180, 270) for m in (False, True)]
IDS = [f"{r}{'-mirrored' if m else ''}" for r, m in POSES]


def _correction(rotation: int = 90, mirrored: bool = True, view: str = "PA") -> Correction:
    return Correction(Turn(rotation, mirrored), view, "model compact-invariant-64-v3", WHEN)


@pytest.fixture(scope="module")
def upright() -> np.ndarray:
    return np.asarray(rg1().pixel_array)


def _saved(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _errors(path: Path) -> set[str]:
    errors, _, _ = dciodvfy(path)
    return set(errors)


# ------------------------------------------------------------------ the pixels


@pytest.mark.parametrize(("rotation", "mirrored"), POSES, ids=IDS)
def test_rg1_in_every_pose_comes_back_upright(
    tmp_path: Path, upright: np.ndarray, rotation: int, mirrored: bool
) -> None:
    original = turned_original(upright, rotation, mirrored)
    replacement = _saved(
        build_corrected_image(original, _correction(rotation, mirrored)), tmp_path / "r.dcm"
    )
    assert np.array_equal(replacement.pixel_array, upright)
    assert (replacement.Rows, replacement.Columns) == upright.shape
    assert replacement.PatientOrientation == ["L", "F"]
    assert replacement.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


SYNTAXES = [
    # (written in, the replacement written as)
    (ExplicitVRLittleEndian, ExplicitVRLittleEndian),
    (JPEG2000Lossless, JPEG2000Lossless),
    (JPEGLosslessSV1, ExplicitVRLittleEndian),  # pydicom has no JPEG lossless encoder
    (RLELossless, RLELossless),
    (JPEGLSLossless, JPEGLSLossless),
    (JPEG2000, ExplicitVRLittleEndian),  # lossy: its decoded pixels, losslessly
]
SYNTAX_IDS = [
    "explicit-le",
    "jpeg2000-lossless",
    "jpeg-lossless",
    "rle",
    "jpeg-ls-lossless",
    "jpeg2000-lossy",
]


def _check_syntax_round_trip(
    tmp_path: Path, upright: np.ndarray, syntax: str, written_as: str, rotation: int, mirrored: bool
) -> None:
    path = write_in_syntax(turned_original(upright, rotation, mirrored), syntax, tmp_path)
    original = pydicom.dcmread(path)
    assert original.file_meta.TransferSyntaxUID == syntax
    stored = original.pixel_array
    if syntax != JPEG2000:
        assert np.array_equal(stored, stored_as(upright, rotation, mirrored))
    replacement = _saved(
        build_corrected_image(original, _correction(rotation, mirrored)), tmp_path / "r.dcm"
    )
    turn = Turn(rotation, mirrored)
    # Already upright (a header-only correction): the encoded pixels stay as they came.
    assert replacement.file_meta.TransferSyntaxUID == (syntax if turn.is_identity else written_as)
    # The replacement's decoded pixels are the original's decoded pixels turned back.
    assert np.array_equal(replacement.pixel_array, upright_pixels(stored, turn))
    if syntax == JPEG2000:
        assert replacement.get("LossyImageCompression") == (
            original.get("LossyImageCompression") if turn.is_identity else "01"
        )
    else:
        assert np.array_equal(replacement.pixel_array, upright)
        assert "LossyImageCompression" not in replacement


@pytest.mark.parametrize(("syntax", "written_as"), SYNTAXES, ids=SYNTAX_IDS)
@pytest.mark.parametrize(("rotation", "mirrored"), POSES, ids=IDS)
def test_rg1_detail_in_every_syntax_and_pose(
    tmp_path: Path, upright: np.ndarray, syntax: str, written_as: str, rotation: int, mirrored: bool
) -> None:
    """Every syntax x every pose on a 384 x 256 piece of RG1 (real pixels, small enough
    to encode 48 times)."""
    detail = np.ascontiguousarray(upright[700:1084, 800:1056])
    _check_syntax_round_trip(tmp_path, detail, syntax, written_as, rotation, mirrored)


@pytest.mark.parametrize(
    ("syntax", "written_as", "rotation", "mirrored"),
    [
        (syntax, written_as, rotation, mirrored)
        for (syntax, written_as), (rotation, mirrored) in zip(
            SYNTAXES,
            [(270, False), (90, True), (180, True), (90, False), (0, True), (270, True)],
            strict=True,
        )
    ],
    ids=SYNTAX_IDS,
)
def test_whole_rg1_in_each_syntax(
    tmp_path: Path, upright: np.ndarray, syntax: str, written_as: str, rotation: int, mirrored: bool
) -> None:
    _check_syntax_round_trip(tmp_path, upright, syntax, written_as, rotation, mirrored)


@pytest.mark.parametrize(
    "path",
    [
        str(SAMPLES / "rg1" / "RG1_J2KI.dcm"),  # lossy JPEG 2000, MONOCHROME1
        "RG1_J2KI.dcm",
        str(SAMPLES / "study1" / "frontal.dcm"),  # JPEG 2000 lossless
        str(SAMPLES / "study1" / "lateral.dcm"),  # JPEG-LS lossless
        str(SAMPLES / "study3" / "frontal.dcm"),  # not square
    ],
    ids=[
        "sample-rg1-lossy",
        "pydicom-data-rg1-lossy",
        "study1-frontal-j2k",
        "study1-lateral-jpeg-ls",
        "study3-frontal",
    ],
)
@pytest.mark.parametrize(
    ("rotation", "mirrored"),
    [(90, False), (180, True), (270, True)],
    ids=["90", "180-mirrored", "270-mirrored"],
)
def test_samples_turned_back_losslessly(
    tmp_path: Path, path: str, rotation: int, mirrored: bool
) -> None:
    original = rg1(path) if "/" not in path else pydicom.dcmread(path)
    syntax = original.file_meta.TransferSyntaxUID
    view = "LL" if "lateral" in path else "PA"
    replacement = _saved(
        build_corrected_image(original, _correction(rotation, mirrored, view)), tmp_path / "r.dcm"
    )
    assert np.array_equal(
        replacement.pixel_array, upright_pixels(original.pixel_array, Turn(rotation, mirrored))
    )
    if syntax == JPEG2000:  # lossy in: the decoded pixels, losslessly, flagged lossy
        assert replacement.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert replacement.LossyImageCompression == "01"
        assert replacement.LossyImageCompressionMethod == "ISO_15444_1"
    else:
        assert replacement.file_meta.TransferSyntaxUID == syntax


def test_the_shipped_models_answer_puts_a_turned_real_film_upright(
    tmp_path: Path, upright: np.ndarray, shipped_models: Callable[[], Classifier]
) -> None:
    """The direction convention end to end: RG1 stored turned by a known amount, read
    and answered by the shipped model, corrected from that answer: upright again."""
    from cxr_orient.imaging import load_dicom_image

    classifier = shipped_models()
    poses = [(90, False), (270, True), (180, True)]
    images = []
    for i, (rotation, mirrored) in enumerate(poses):
        path = tmp_path / f"stored{i}.dcm"
        turned_original(upright, rotation, mirrored).save_as(path, enforce_file_format=True)
        images.append(load_dicom_image(path))
    answers = classifier.predict(np.repeat(np.stack(images)[..., None], 3, axis=-1))
    for i, answer in enumerate(answers):
        assert answer.rotation is not None and answer.mirrored is not None
        original = pydicom.dcmread(tmp_path / f"stored{i}.dcm")
        correction = Correction(
            Turn.from_answer(answer.rotation, answer.mirrored), "PA", "model shipped", WHEN
        )
        assert np.array_equal(build_corrected_image(original, correction).pixel_array, upright), (
            poses[i]
        )


# ------------------------------------------------------------------ the header


def test_replacement_header(tmp_path: Path, upright: np.ndarray) -> None:
    original = turned_original(upright, 90, True, dx=True)
    original.ImagerPixelSpacing = [0.2, 0.1]
    original.CollimatorShape = "RECTANGULAR"
    # The collimator's opening on the stored pixels: rows 11-30, columns 101-150.
    original.CollimatorUpperHorizontalEdge, original.CollimatorLowerHorizontalEdge = 11, 30
    original.CollimatorLeftVerticalEdge, original.CollimatorRightVerticalEdge = 101, 150
    original.CenterOfCircularShutter = [20, 40]
    original.add_new(0x60000010, "US", original.Rows)  # an overlay: old geometry
    before = original.to_json_dict()
    correction = _correction(90, True)
    replacement = build_corrected_image(original, correction)
    assert original.to_json_dict() == before, "the caller's dataset is left alone"

    assert replacement.SOPInstanceUID == corrected_instance_uid(original.SOPInstanceUID, correction)
    assert replacement.SOPInstanceUID != original.SOPInstanceUID
    assert replacement.SOPClassUID == original.SOPClassUID
    assert replacement.file_meta.MediaStorageSOPInstanceUID == replacement.SOPInstanceUID
    assert replacement.StudyInstanceUID == original.StudyInstanceUID
    assert replacement.SeriesInstanceUID == corrected_series_uid(original.SeriesInstanceUID)
    assert replacement.SeriesNumber == 9001
    assert replacement.SeriesDescription.startswith("cxr-orient corrected")
    assert replacement.PatientID == original.PatientID
    assert replacement.ImageType[:2] == ["DERIVED", "SECONDARY"]
    assert "90 degrees clockwise then mirrored" in replacement.DerivationDescription
    assert "compact-invariant-64-v3" in replacement.DerivationDescription
    (source,) = replacement.SourceImageSequence
    assert source.ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert source.ReferencedSOPClassUID == original.SOPClassUID
    purpose = source.PurposeOfReferenceCodeSequence[0]
    assert (
        purpose.CodeValue,
        purpose.CodingSchemeDesignator,
        purpose.CodeMeaning,
    ) == SOURCE_FOR_PROCESSING
    assert replacement.ViewPosition == "PA"
    assert replacement.ViewCodeSequence[0].CodeValue == "272479007"
    (equipment,) = replacement.ContributingEquipmentSequence
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert equipment.Manufacturer == "cxr-orient"
    assert replacement.Manufacturer == original.Manufacturer  # the acquisition device's
    assert (replacement.InstanceCreationDate, replacement.InstanceCreationTime) == (
        "20261206",
        "213005",
    )
    # Geometry: spacings trade places, the collimator moves with the pixels.
    assert [float(v) for v in replacement.ImagerPixelSpacing] == [0.1, 0.2]
    mask = np.zeros(original.pixel_array.shape, bool)
    mask[10:30, 100:150] = True
    rows, columns = np.nonzero(upright_pixels(mask, correction.turn))
    assert (
        replacement.CollimatorUpperHorizontalEdge,
        replacement.CollimatorLowerHorizontalEdge,
    ) == (rows.min() + 1, rows.max() + 1)
    assert (replacement.CollimatorLeftVerticalEdge, replacement.CollimatorRightVerticalEdge) == (
        columns.min() + 1,
        columns.max() + 1,
    )
    point = np.zeros(original.pixel_array.shape, bool)
    point[19, 39] = True
    (row,), (column,) = np.nonzero(upright_pixels(point, correction.turn))
    assert list(replacement.CenterOfCircularShutter) == [row + 1, column + 1]
    assert 0x60000010 not in replacement


def test_a_header_only_correction_keeps_the_pixels_as_they_came(tmp_path: Path) -> None:
    """Upright already, only the view was wrong: the encoded pixels and the transfer
    syntax (lossy JPEG 2000 here) stay exactly as they were."""
    original = rg1("RG1_J2KI.dcm")
    original.ViewPosition = "LL"
    replacement = _saved(
        build_corrected_image(original, _correction(0, False, "PA")), tmp_path / "r.dcm"
    )
    assert replacement.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert replacement.PixelData == original.PixelData
    assert replacement.ViewPosition == "PA"
    assert "pixels unchanged; view PA (was LL)" in replacement.DerivationDescription


def test_a_bitmap_shutter_goes_with_its_overlay(upright: np.ndarray) -> None:
    original = turned_original(upright, 90, False)
    original.ShutterShape = ["RECTANGULAR", "BITMAP"]
    original.ShutterOverlayGroup = 0x6000
    original.ShutterLeftVerticalEdge, original.ShutterRightVerticalEdge = 1, 10
    original.ShutterUpperHorizontalEdge, original.ShutterLowerHorizontalEdge = 1, 20
    replacement = build_corrected_image(original, _correction(90, False))
    assert replacement.ShutterShape == "RECTANGULAR"
    assert "ShutterOverlayGroup" not in replacement
    # The rectangle moved: a clockwise quarter turn of rows 1-20, columns 1-10.
    assert (replacement.ShutterUpperHorizontalEdge, replacement.ShutterLowerHorizontalEdge) == (
        1,
        10,
    )
    rows = original.Rows
    assert (replacement.ShutterLeftVerticalEdge, replacement.ShutterRightVerticalEdge) == (
        rows + 1 - 20,
        rows,
    )


def test_single_valued_image_type_and_orientation(upright: np.ndarray) -> None:
    """pydicom hands one value bare: "ORIGINAL" is one value, not eight letters, and a
    one-value Patient Orientation names no facing."""
    original = turned_original(upright, 90, False, view="LL", orientation=[])
    original.ImageType = "ORIGINAL"
    original.PatientOrientation = "AF"
    replacement = build_corrected_image(original, _correction(90, False, "LL"))
    assert list(replacement.ImageType) == ["DERIVED", "SECONDARY"]
    assert list(replacement.PatientOrientation) == []


def test_pixel_aspect_ratio_trades_places(upright: np.ndarray) -> None:
    original = turned_original(upright, 270, False)
    original.PixelAspectRatio = [2, 1]
    assert list(build_corrected_image(original, _correction(270, False)).PixelAspectRatio) == [1, 2]
    assert list(build_corrected_image(original, _correction(180, False)).PixelAspectRatio) == [2, 1]


def test_same_answer_same_object(tmp_path: Path, upright: np.ndarray) -> None:
    """A re-send rebuilds the replacement: byte for byte the same file."""
    path = write_in_syntax(turned_original(upright, 90, False), RLELossless, tmp_path)
    first = build_corrected_image(pydicom.dcmread(path), _correction(90, False))
    again = build_corrected_image(pydicom.dcmread(path), _correction(90, False))
    first.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    again.save_as(tmp_path / "b.dcm", enforce_file_format=True)
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()
    other = build_corrected_image(pydicom.dcmread(path), _correction(270, False))
    assert other.SOPInstanceUID != first.SOPInstanceUID
    assert other.SeriesInstanceUID == first.SeriesInstanceUID


@pytest.mark.parametrize(
    ("view", "upright_as", "expected"),
    [
        ("PA", ["L", "F"], ["L", "F"]),
        ("AP", ["L", "F"], ["L", "F"]),
        ("PA", [], ["L", "F"]),  # no orientation on the original: a frontal's is known
        ("LL", ["A", "F"], ["A", "F"]),  # the facing kept from the original
        ("RL", ["P", "F"], ["P", "F"]),
        ("LL", [], []),  # a lateral's facing unknown: left empty
    ],
    ids=["pa", "ap", "pa-none", "ll-facing-right", "rl-facing-left", "ll-unknown"],
)
def test_patient_orientation_for_each_view(
    upright: np.ndarray, view: str, upright_as: list[str], expected: list[str]
) -> None:
    original = turned_original(upright, 270, False, view=view, orientation=upright_as)
    replacement = build_corrected_image(original, _correction(270, False, view))
    assert list(replacement.PatientOrientation) == expected
    assert replacement.ViewPosition == view


def test_the_accept_policy_refuses_the_replacement(tmp_path: Path, upright: np.ndarray) -> None:
    """A replacement sent back to cxr-orient is not classified again (DERIVED\\SECONDARY,
    CXR_REFUSE_IMAGE_TYPES' default), while its original is accepted."""
    original = turned_original(upright, 90, False)
    original.ImageType = ["ORIGINAL", "PRIMARY"]
    original.save_as(tmp_path / "o.dcm", enforce_file_format=True)
    build_corrected_image(original, _correction(90, False)).save_as(
        tmp_path / "r.dcm", enforce_file_format=True
    )
    settings = Settings()
    assert check_policy(read_header(tmp_path / "o.dcm"), settings.accept) is None
    refusal = check_policy(read_header(tmp_path / "r.dcm"), settings.accept)
    assert refusal is not None and refusal.rule == "image_type"


def test_refuses_what_it_cannot_correct(upright: np.ndarray) -> None:
    original = turned_original(upright, 90, False)
    with pytest.raises(CorrectionError, match="view must be"):
        _correction(view="LAT")
    colour = copy.deepcopy(original)
    colour.SamplesPerPixel = 3
    with pytest.raises(UnsupportedImageError, match="SamplesPerPixel 3"):
        build_corrected_image(colour, _correction())
    for keyword in ("SeriesInstanceUID", "BitsStored"):
        broken = copy.deepcopy(original)
        delattr(broken, keyword)
        with pytest.raises(MissingAttributeError, match=keyword):
            build_corrected_image(broken, _correction())
    header = copy.deepcopy(original)
    del header.PixelData
    with pytest.raises(NoPixelDataError, match="no Pixel Data"):
        build_corrected_image(header, _correction())


# ------------------------------------------------------------------ dciodvfy


@pytest.mark.parametrize(
    ("view", "dx"),
    [("PA", True), ("AP", True), ("LL", True), ("RL", True), ("PA", False), ("LL", False)],
    ids=["dx-pa", "dx-ap", "dx-ll", "dx-rl", "cr-pa", "cr-ll"],
)
def test_dciodvfy_finds_no_new_error_in_the_replacement(
    tmp_path: Path, upright: np.ndarray, view: str, dx: bool
) -> None:
    """The DX original is complete (dciodvfy finds nothing): the replacement must be too.
    The CR original is RG1's own header, whose only errors (Pixel Spacing 0\\0) it keeps."""
    original = turned_original(
        upright,
        90,
        True,
        dx=dx,
        view=view,
        orientation=["A", "F"] if view in ("LL", "RL") else None,
    )
    original.save_as(tmp_path / "o.dcm", enforce_file_format=True)
    build_corrected_image(original, _correction(90, True, view)).save_as(
        tmp_path / "r.dcm", enforce_file_format=True
    )
    before = _errors(tmp_path / "o.dcm")
    if dx:
        assert before == set()
    else:
        assert before and all("Pixel Spacing" in e for e in before), before
    assert _errors(tmp_path / "r.dcm") == before
    _, warnings_before, _ = dciodvfy(tmp_path / "o.dcm")
    _, warnings, report = dciodvfy(tmp_path / "r.dcm")
    assert ("DXImageForPresentation" if dx else "CRImage") in report.split(), report
    new = set(warnings) - set(warnings_before)
    if dx:
        assert new == set(), new
    else:  # View Code Sequence is DX Positioning's: in a CR, a standard extension
        assert new and all(any(k in w for k in ("(0x0054,0x022", "(0x0008,0x010")) for w in new), (
            new
        )


def test_dciodvfy_on_a_lateral_of_unknown_facing(tmp_path: Path, upright: np.ndarray) -> None:
    original = turned_original(upright, 180, False, dx=True, view="LL", orientation=[])
    original.save_as(tmp_path / "o.dcm", enforce_file_format=True)
    build_corrected_image(original, _correction(180, False, "LL")).save_as(
        tmp_path / "r.dcm", enforce_file_format=True
    )
    assert _errors(tmp_path / "r.dcm") == _errors(tmp_path / "o.dcm")


# ------------------------------------------------------------------ the rejection note


def test_rejection_note_rejects_the_original_then_the_replacement(
    tmp_path: Path, upright: np.ndarray
) -> None:
    original = turned_original(upright, 90, True)
    original.save_as(tmp_path / "o.dcm", enforce_file_format=True)
    replacement = build_corrected_image(original, _correction())
    notes = {
        "original": build_rejection_note(
            [original], reason="stored turned", decided_by="model m", decided_at=WHEN
        ),
        # The reversal: a reviewer rejects the replacement later.
        "replacement": build_rejection_note(
            [replacement], reason="correction undone", decided_by="reviewer alice", decided_at=WHEN
        ),
    }
    for name, rejected in (("original", original), ("replacement", replacement)):
        note = _saved(notes[name], tmp_path / f"{name}.dcm")
        assert note.SOPClassUID == KOS and note.Modality == "KO"
        title = note.ConceptNameCodeSequence[0]
        assert (title.CodeValue, title.CodingSchemeDesignator) == (
            REJECTED_FOR_QUALITY_REASONS.value,
            "DCM",
        )
        assert title.CodeMeaning == "Rejected for Quality Reasons"
        assert note.StudyInstanceUID == original.StudyInstanceUID
        assert note.PatientID == original.PatientID
        evidence = note.CurrentRequestedProcedureEvidenceSequence[0]
        series = evidence.ReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == rejected.SeriesInstanceUID
        assert [s.ReferencedSOPInstanceUID for s in series.ReferencedSOPSequence] == [
            rejected.SOPInstanceUID
        ]
        images = [i for i in note.ContentSequence if i.ValueType == "IMAGE"]
        assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [
            rejected.SOPInstanceUID
        ]
        errors, warnings, report = dciodvfy(tmp_path / f"{name}.dcm")
        assert "KeyObjectSelectionDocument" in report.replace(" ", ""), report
        assert errors == [], report
        # RG1's Referring Physician's Name "ward" (copied) is the only thing it notes.
        assert all("Referring Physician" in w for w in warnings), warnings
    assert notes["original"].SOPInstanceUID != notes["replacement"].SOPInstanceUID
    again = build_rejection_note(
        [original], reason="stored turned", decided_by="model m", decided_at=WHEN
    )
    assert again.SOPInstanceUID == notes["original"].SOPInstanceUID


@pytest.mark.parametrize("sample", ["study1/frontal.dcm", "study2/lateral.dcm"])
def test_rejection_note_of_a_sample_with_a_bare_header(tmp_path: Path, sample: str) -> None:
    """The demo samples carry no patient name, birth date, study date...: the note
    still builds, with those Type 2 attributes empty, and dciodvfy finds no error."""
    original = pydicom.dcmread(SAMPLES / sample)
    assert "PatientName" not in original
    note = build_rejection_note([original], reason="r", decided_by="m", decided_at=WHEN)
    note.save_as(tmp_path / "note.dcm", enforce_file_format=True)
    errors, _, report = dciodvfy(tmp_path / "note.dcm")
    assert errors == [], report
    assert note.PatientID == original.PatientID and "PatientName" not in original


def test_rejection_note_stays_in_one_study(upright: np.ndarray) -> None:
    first = turned_original(upright, 0, False)
    other = turned_original(upright, 0, False)
    other.StudyInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="one study"):
        build_rejection_note([first, other], reason="r", decided_by="m", decided_at=WHEN)
    with pytest.raises(ValueError, match="at least one"):
        build_rejection_note([], reason="r", decided_by="m", decided_at=WHEN)
    assert first.SOPClassUID == CR_STORAGE
