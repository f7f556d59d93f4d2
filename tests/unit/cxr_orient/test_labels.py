"""Label import: validated as a whole, append-only, latest wins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cxr_orient.errors import LabelImportError
from cxr_orient.labels import import_labels, read_label_csv
from db import crud
from db.models import OrientationLabel
from db.session import session_scope


def _instances(*uids: str) -> None:
    with session_scope() as session:
        study = crud.get_or_create_study(session, study_instance_uid="9.9", patient_id="P")
        for uid in uids:
            crud.add_instance(
                session,
                study=study,
                sop_instance_uid=uid,
                series_instance_uid=None,
                file_path=f"/a/{uid}",
                file_sha256="0" * 64,
                file_size=1,
                modality="CR",
                transfer_syntax_uid=None,
                header_view_position=None,
            )


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_import_appends_and_latest_wins(migrated_db: str, tmp_path: Path) -> None:
    _instances("1.1", "1.2")
    first = _csv(
        tmp_path, "sop_instance_uid,label,source,annotator\n1.1,frontal,qa,dr a\n1.2,LATERAL,,\n"
    )
    with session_scope() as session:
        assert import_labels(session, read_label_csv(first)) == 2
    second = _csv(tmp_path, "sop_instance_uid,label\n1.1,lateral\n")
    with session_scope() as session:
        assert import_labels(session, read_label_csv(second), default_annotator="dr b") == 1
        latest = {
            i.sop_instance_uid: (g.label, g.source, g.annotator)
            for i, _, g in crud.latest_labels(session)
        }
    assert latest == {
        "1.1": (OrientationLabel.lateral, "import", "dr b"),
        "1.2": (OrientationLabel.lateral, "import", None),
    }


def test_a_frontal_keeps_its_projection(migrated_db: str, tmp_path: Path) -> None:
    _instances("1.1", "1.2", "1.3")
    body = "sop_instance_uid,label,projection\n1.1,AP,\n1.2,frontal,pa\n1.3,frontal,\n"
    with session_scope() as session:
        assert import_labels(session, read_label_csv(_csv(tmp_path, body))) == 3
        got = {
            i.sop_instance_uid: (g.label, g.projection) for i, _, g in crud.latest_labels(session)
        }
    assert got == {
        "1.1": (OrientationLabel.frontal, "AP"),
        "1.2": (OrientationLabel.frontal, "PA"),
        "1.3": (OrientationLabel.frontal, None),
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "sop_instance_uid,label,projection\n1.1,lateral,PA\n",
            "line 2: projection PA given for a 'lateral'",
        ),
        ("sop_instance_uid,label,projection\n1.1,frontal,LL\n", "line 2: unknown projection 'LL'"),
        ("sop_instance_uid,label\n1.1,frontal\n7.7,frontal\n", "line 3: unknown sop_instance_uid"),
        ("sop_instance_uid,label\n1.1,oblique\n", "line 2: unknown label 'oblique'"),
        ("sop_instance_uid,label\n,frontal\n", "line 2: empty sop_instance_uid"),
        ("uid,view\n1.1,frontal\n", "missing column(s) sop_instance_uid, label"),
    ],
    ids=[
        "projection-on-lateral",
        "unknown-projection",
        "unknown-uid",
        "unknown-label",
        "empty-uid",
        "wrong-columns",
    ],
)
def test_bad_rows_import_nothing(migrated_db: str, tmp_path: Path, body: str, message: str) -> None:
    _instances("1.1")
    rows = read_label_csv(_csv(tmp_path, body)) if "missing" not in message else None
    with pytest.raises(LabelImportError, match=re.escape(message)):
        if rows is None:
            read_label_csv(_csv(tmp_path, body))
        with session_scope() as session:
            import_labels(session, rows or [])
    with session_scope() as session:
        assert crud.latest_labels(session) == []
