"""Ground-truth labels from radiologists or QA: validated, append-only imports.

A CSV has the columns ``sop_instance_uid,label[,source,annotator,projection]``. A
label ``PA`` or ``AP`` is a frontal with that projection; ``projection`` (PA, AP or
empty) says it for a ``frontal`` (kept in ``labels.projection``, the PA/AP head's
training target). The whole file is checked before anything is written: one unknown UID
or label, or a projection on a lateral, and nothing is imported, with every bad line
named in the error.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxr_orient.errors import LabelImportError
from cxr_orient.imaging.header import PROJECTIONS
from db import crud
from db.models import Instance, OrientationLabel

REQUIRED_COLUMNS = ("sop_instance_uid", "label")
LABEL_ALIASES = {
    "frontal": "frontal",
    "pa": "frontal",
    "ap": "frontal",
    "lateral": "lateral",
    "lat": "lateral",
    "ll": "lateral",
    "rl": "lateral",
}


@dataclass(frozen=True)
class LabelRow:
    sop_instance_uid: str
    label: OrientationLabel
    source: str
    annotator: str | None
    projection: str | None = None


def parse_projection(label: str, projection: str | None) -> str | None:
    """The projection a row gives: its ``projection`` column, else a ``PA``/``AP``
    label's; None when neither says. Only a frontal has one."""
    said = (projection or "").strip().upper() or None
    key = label.strip().upper()
    if said is None and key in PROJECTIONS:
        said = key
    if said is not None and said not in PROJECTIONS:
        raise ValueError(f"unknown projection {projection!r} (expected PA or AP)")
    if said is not None and parse_label(label) is not OrientationLabel.frontal:
        raise ValueError(f"projection {said} given for a {label.strip()!r}: only a frontal has one")
    return said


def parse_label(value: str) -> OrientationLabel:
    key = value.strip().lower()
    if key not in LABEL_ALIASES:
        raise ValueError(f"unknown label {value!r} (expected frontal or lateral)")
    return OrientationLabel(LABEL_ALIASES[key])


def read_label_csv(path: Path) -> list[Mapping[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise LabelImportError(f"{path}: missing column(s) {', '.join(missing)}")
            return list(reader)
    except OSError as exc:
        raise LabelImportError(f"cannot read {path}: {exc}") from exc


def import_labels(
    session: Session,
    rows: Iterable[Mapping[str, str]],
    *,
    default_source: str = "import",
    default_annotator: str | None = None,
) -> int:
    """Validate every row, then append them all; returns the number recorded.

    Raises :class:`LabelImportError` listing each bad row (line numbers count
    the header as line 1); in that case nothing is written.
    """
    parsed: list[tuple[int, LabelRow]] = []
    problems: list[str] = []
    for line, row in enumerate(rows, start=2):
        uid = (row.get("sop_instance_uid") or "").strip()
        if not uid:
            problems.append(f"line {line}: empty sop_instance_uid")
            continue
        try:
            label = parse_label(row.get("label") or "")
            projection = parse_projection(row.get("label") or "", row.get("projection"))
        except ValueError as exc:
            problems.append(f"line {line}: {exc}")
            continue
        parsed.append(
            (
                line,
                LabelRow(
                    sop_instance_uid=uid,
                    label=label,
                    source=(row.get("source") or "").strip() or default_source,
                    annotator=(row.get("annotator") or "").strip() or default_annotator,
                    projection=projection,
                ),
            )
        )
    uids = {r.sop_instance_uid for _, r in parsed}
    known: dict[str, int] = {}
    uid_list = sorted(uids)
    for start in range(0, len(uid_list), 1000):
        chunk = uid_list[start : start + 1000]
        query = select(Instance.sop_instance_uid, Instance.id).where(
            Instance.sop_instance_uid.in_(chunk)
        )
        for found_uid, instance_id in session.execute(query):
            if found_uid is not None:
                known[found_uid] = instance_id
    problems += [
        f"line {line}: unknown sop_instance_uid {r.sop_instance_uid}"
        for line, r in parsed
        if r.sop_instance_uid not in known
    ]
    if problems:
        shown = "; ".join(problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise LabelImportError(f"nothing imported, {len(problems)} bad row(s): {shown}{more}")
    for _, r in parsed:
        crud.add_label(
            session,
            instance_id=known[r.sop_instance_uid],
            label=r.label,
            source=r.source,
            annotator=r.annotator,
            projection=r.projection,
        )
    return len(parsed)
