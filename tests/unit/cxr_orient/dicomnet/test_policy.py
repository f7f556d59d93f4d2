"""cxr_orient/dicomnet/policy.py: each accept rule and each of its settings, on headers;
then through ingest on SQLite: pydicom-data's CT_small and MR_small come out
``out_of_scope``, recorded, printed by ``enqueue``, shown by ``results``/``status``,
never queued."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from pydicom.data import get_testdata_file

from cli.main import main
from cxr_orient.dicomnet.policy import check_policy, check_uids, uid_problem
from cxr_orient.imaging import DicomHeader
from cxr_orient.ingest import enqueue_paths
from cxr_orient.settings import AcceptSettings, Settings, get_settings
from db import crud
from db.models import InstanceStatus
from db.session import session_scope
from tests.utils.corpus import rg1_dicom
from tests.utils.embedded import Embedded, embedded_setup
from worker.dispatch import send_instances

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CHEST_CR = DicomHeader(
    sop_instance_uid="1.2.3.4",
    study_instance_uid="1.2.3",
    series_instance_uid=None,
    patient_id=None,
    modality="CR",
    view_position="PA",
    transfer_syntax_uid=None,
    rows=10,
    columns=10,
    sop_class_uid=CR,
    body_part_examined=None,
    image_type=(),
)


def _rule(header: DicomHeader, **settings: object) -> tuple[str, str | None] | None:
    refusal = check_policy(header, AcceptSettings(**settings))  # type: ignore[arg-type]
    return None if refusal is None else (refusal.rule, refusal.value)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, None),
        ({"modality": "DX", "sop_class_uid": DX_PRESENTATION}, None),
        ({"modality": "DX", "sop_class_uid": DX_PROCESSING}, None),
        ({"modality": "cr"}, None),  # case-insensitive
        ({"modality": "CT"}, ("modality", "CT")),
        ({"modality": None}, ("modality", None)),
        ({"sop_class_uid": SECONDARY_CAPTURE}, ("sop_class", SECONDARY_CAPTURE)),
        ({"sop_class_uid": None}, ("sop_class", None)),
        ({"body_part_examined": "CHEST"}, None),
        ({"body_part_examined": "thorax"}, None),
        ({"body_part_examined": "SKULL"}, ("body_part", "SKULL")),
        ({"image_type": ("DERIVED", "PRIMARY")}, None),
        ({"image_type": ("ORIGINAL", "PRIMARY")}, None),
        ({"image_type": ("DERIVED", "SECONDARY")}, ("image_type", "DERIVED\\SECONDARY")),
        (
            {"image_type": ("DERIVED", "SECONDARY", "SCREEN")},
            ("image_type", "DERIVED\\SECONDARY\\SCREEN"),
        ),
    ],
    ids=[
        "chest-cr",
        "dx-presentation",
        "dx-processing",
        "modality-lowercase",
        "ct",
        "no-modality",
        "secondary-capture",
        "no-sop-class",
        "chest",
        "thorax-lowercase",
        "skull",
        "derived-primary",
        "original-primary",
        "derived-secondary",
        "screenshot",
    ],
)
def test_default_rules(
    changes: dict[str, object],
    expected: tuple[str, str | None] | None,
) -> None:
    assert _rule(replace(CHEST_CR, **changes)) == expected  # type: ignore[arg-type]


def test_modality_setting() -> None:
    ct = replace(CHEST_CR, modality="CT")
    assert _rule(ct, accept_modalities="cr, ct", accept_sop_classes="") is None
    assert _rule(ct, accept_modalities="", accept_sop_classes="") is None, "empty: any"
    assert _rule(CHEST_CR, accept_modalities="DX") == ("modality", "CR")


def test_sop_class_setting() -> None:
    sc = replace(CHEST_CR, sop_class_uid=SECONDARY_CAPTURE)
    assert _rule(sc, accept_sop_classes=f"{CR},{SECONDARY_CAPTURE}") is None
    assert _rule(sc, accept_sop_classes="") is None, "empty: any"
    assert _rule(CHEST_CR, accept_sop_classes=DX_PRESENTATION) == ("sop_class", CR)
    with pytest.raises(ValidationError, match="not a DICOM UID"):
        Settings(accept_sop_classes="CR Image Storage")


def test_body_part_settings() -> None:
    skull = replace(CHEST_CR, body_part_examined="Skull")
    assert _rule(skull, accept_body_parts="chest,skull") is None
    assert _rule(skull, accept_body_parts="") is None, "empty: any"
    assert _rule(CHEST_CR, accept_missing_body_part=False) == ("body_part", None)
    assert _rule(CHEST_CR, accept_missing_body_part=False, accept_body_parts="") is None
    chest = replace(CHEST_CR, body_part_examined="CHEST")
    assert _rule(chest, accept_missing_body_part=False) is None


def test_image_type_setting() -> None:
    localizer = replace(CHEST_CR, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    screenshot = replace(CHEST_CR, image_type=("DERIVED", "SECONDARY"))
    assert _rule(localizer) is None
    assert _rule(localizer, refuse_image_types="derived\\secondary, LOCALIZER") == (
        "image_type",
        "ORIGINAL\\PRIMARY\\LOCALIZER",
    )
    assert _rule(screenshot, refuse_image_types="") is None, "empty: no ImageType rule"
    with pytest.raises(ValidationError, match="empty value"):
        Settings(refuse_image_types="DERIVED\\\\SECONDARY")


def test_the_message_names_the_rule_the_value_and_the_setting() -> None:
    refusal = check_policy(replace(CHEST_CR, modality="MR"), Settings().accept)
    assert refusal is not None and refusal.code == "out_of_scope"
    assert refusal.message == (
        "modality: Modality 'MR' is not one of CR, DX (CXR_ACCEPT_MODALITIES)"
    )


# --- through ingest ---------------------------------------------------------------------


@pytest.fixture
def embedded(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> Embedded:
    return embedded_setup(tmp_path, configure, monkeypatch)


def _pydicom_file(name: str, target: Path) -> Path:
    found = get_testdata_file(name)
    assert isinstance(found, str), f"pydicom-data's {name} is not installed"
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(found, target))


def test_ct_and_mr_are_recorded_out_of_scope_and_never_queued(embedded: Embedded) -> None:
    _pydicom_file("CT_small.dcm", embedded.root / "ct.dcm")
    _pydicom_file("MR_small.dcm", embedded.root / "mr.dcm")
    chest = rg1_dicom(embedded.root / "chest.dcm")

    report = enqueue_paths([embedded.root], send=send_instances, settings=get_settings())

    assert len(report.queued) == 1 and report.refused == []
    assert sorted((Path(p).name, rule) for p, rule, _ in report.out_of_scope) == [
        ("ct.dcm", "modality"),
        ("mr.dcm", "modality"),
    ]
    assert [m.args[0] for m in embedded.messages()] == report.queued, "only the chest film"
    with session_scope() as session:
        rows = {Path(r.file_path).name: r for r in crud.results(session)}
        counts = crud.status_counts(session)
    assert rows["ct.dcm"].status == rows["mr.dcm"].status == "out_of_scope"
    assert rows["ct.dcm"].error == (
        "out_of_scope: modality: Modality 'CT' is not one of CR, DX (CXR_ACCEPT_MODALITIES)"
    )
    assert rows["ct.dcm"].answer is None and rows["chest.dcm"].status == "queued"
    assert counts["out_of_scope"] == 2 and counts["failed"] == 0, "not a failure"
    assert str(chest) == rows["chest.dcm"].file_path

    again = enqueue_paths([embedded.root], send=send_instances, settings=get_settings())
    assert again.out_of_scope == [] and len(again.already_known) == 3, "recorded once"


def test_enqueue_prints_them_results_and_status_show_them(embedded: Embedded) -> None:
    _pydicom_file("CT_small.dcm", embedded.root / "ct.dcm")
    screenshot = rg1_dicom(embedded.root / "shot.dcm")
    ds = pydicom.dcmread(screenshot)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.save_as(screenshot)
    runner = CliRunner()

    enqueued = runner.invoke(main, ["enqueue", str(embedded.root)])
    listed = runner.invoke(main, ["results", "--format", "json"])
    status = runner.invoke(main, ["status"])

    assert enqueued.exit_code == 0, enqueued.output
    assert enqueued.stdout.startswith(
        "2 files: 0 queued, 0 already known, 0 uid_conflict, 2 out_of_scope, 0 refused (2 studies)"
    )
    assert (
        f"  out_of_scope {screenshot}: image_type: ImageType DERIVED\\SECONDARY matches "
        "DERIVED\\SECONDARY (CXR_REFUSE_IMAGE_TYPES)"
    ) in enqueued.stderr
    assert "  out_of_scope " in enqueued.stderr and "Modality 'CT'" in enqueued.stderr
    assert {r["status"] for r in json.loads(listed.stdout)} == {"out_of_scope"}
    assert "out_of_scope 2" in status.stdout


def test_a_refused_file_never_replaces_a_known_instance(
    embedded: Embedded, configure: Callable[..., None]
) -> None:
    configure(uid_conflict_policy="replace")
    film = rg1_dicom(embedded.root / "film.dcm")
    first = enqueue_paths([film], send=None, settings=get_settings())
    ds = pydicom.dcmread(film)
    ds.Modality = "OT"
    resent = embedded.root / "resent.dcm"
    ds.save_as(resent)

    report = enqueue_paths([resent], send=None, settings=get_settings())

    assert [c.action for c in report.uid_conflicts] == ["kept_first"]
    with session_scope() as session:
        instance = crud.get_instance(session, instance_id=first.queued[0])
        assert instance is not None
        assert instance.file_path == str(film)
        assert InstanceStatus(instance.status) == InstanceStatus.queued


# --- UIDs (PS3.5 9.1), checked for every way in ------------------------------------------


@pytest.mark.parametrize(
    ("uid", "problem"),
    [
        ("1.2.840.10008.5.1.4.1.1.1", None),
        ("1.2.0.3", None),  # a component that is 0 alone is fine
        ("1.2.3\x00", None),  # the padding of an odd length
        ("9" * 64, None),
        ("9" * 65, "it is longer than 64 characters"),
        ("", "it is empty"),
        ("1.2.03.4", "a component has a leading zero"),
        ("1..2", "it has an empty component"),
        ("1.2.", "it has an empty component"),
        ("../../../../tmp/x", "it has an empty component"),
        ("1.2.abc", "it holds a character other than digits and dots"),
        ("1.2.3 ", "it holds a character other than digits and dots"),
        ("1.2.\u0663", "it holds a character other than digits and dots"),  # Arabic-Indic 3
    ],
    ids=[
        "ok",
        "zero",
        "nul-pad",
        "64",
        "65",
        "empty",
        "leading-zero",
        "double-dot",
        "trailing-dot",
        "traversal",
        "letters",
        "space",
        "non-ascii-digit",
    ],
)
def test_uid_problem(uid: str, problem: str | None) -> None:
    assert uid_problem(uid) == problem


def test_check_uids_names_the_attribute_and_never_the_value() -> None:
    bad = replace(CHEST_CR, study_instance_uid="../../../../tmp/x")
    error = check_uids(bad)
    assert error is not None and error.code == "invalid_uid"
    assert str(error).startswith("StudyInstanceUID is not a valid DICOM UID")
    assert "tmp" not in str(error)
    assert check_uids(replace(CHEST_CR, series_instance_uid="1.02")) is not None
    assert check_uids(replace(CHEST_CR, sop_instance_uid="1.2.3.x")) is not None
    assert check_uids(CHEST_CR) is None


def test_enqueue_records_an_invalid_uid_as_failed_and_never_queues_it(embedded: Embedded) -> None:
    good = rg1_dicom(embedded.root / "good.dcm")
    for name, keyword, value in (
        ("study.dcm", "StudyInstanceUID", "../../../../tmp/x"),
        ("series.dcm", "SeriesInstanceUID", "1.2.03"),
        ("sop.dcm", "SOPInstanceUID", "1." + "2" * 70),
    ):
        ds = pydicom.dcmread(good)
        setattr(ds, keyword, value)
        ds.save_as(embedded.root / name)

    report = enqueue_paths([embedded.root], send=send_instances, settings=get_settings())

    assert len(report.queued) == 1
    assert sorted((Path(p).name, code) for p, code, _ in report.refused) == [
        ("series.dcm", "invalid_uid"),
        ("sop.dcm", "invalid_uid"),
        ("study.dcm", "invalid_uid"),
    ]
    assert [m.args[0] for m in embedded.messages()] == report.queued, "only the good file"
    with session_scope() as session:
        rows = {Path(r.file_path).name: r for r in crud.results(session)}
        bad_study = crud.find_study_id(session, study_instance_uid="../../../../tmp/x")
    assert rows["study.dcm"].status == "failed"
    assert rows["study.dcm"].error == (
        "invalid_uid: StudyInstanceUID is not a valid DICOM UID "
        "(PS3.5 9.1): it has an empty component"
    )
    assert bad_study is None, "a malformed UID names no study"
