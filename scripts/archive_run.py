"""An archive-sized acceptance run on real radiographs (issue 2's "done when").

``build``: wrap every usable covid-cxr radiograph into DICOM as an archive would
hold it (transfer syntaxes and MONOCHROME1/2 rotated through, ViewPosition
right, missing or wrong), one study per patient, and write ``truth.csv`` with
each file's label, patient and split of the shipped model (train/val/test).

``score``: join ``cxr-orient results --format csv`` with ``truth.csv`` and print
the accuracy by split (only the test patients say anything about the model),
and how many rows each status has.

    python -m scripts.archive_run build ../shared/data/covid-cxr /tmp/archive
    python -m scripts.archive_run score results.csv /tmp/archive/truth.csv

Run from the checkout's root (``-m``): the DICOM writer is :mod:`bench.dicom_factory`,
which is not in the wheel.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from bench.dicom_factory import make_dicom
from cxr_orient.settings import SHIPPED_MODEL

SYNTAXES = [
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    JPEGLSLossless,
    DeflatedExplicitVRLittleEndian,
    JPEG2000,
]
ROOT_UID = "1.2.826.0.1.3680043.10.2026"


def build(covid_cxr: Path, out: Path) -> None:
    split = json.loads((SHIPPED_MODEL.parent / "split.json").read_text())["patients"]
    side = {str(p): name for name, patients in split.items() for p in patients}
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        r
        for r in csv.DictReader((covid_cxr / "manifest.csv").open())
        if r["class"] in ("frontal", "lateral")
    ]
    truth = []
    for n, row in enumerate(rows):
        with Image.open(covid_cxr / row["file"]) as image:
            grey = np.asarray(image.convert("L"), dtype=np.float64)
        pixels = np.rint(grey / 255 * 4095).astype(np.uint16)
        mono1 = n % 4 == 1
        claimed = {"frontal": "PA", "lateral": "LL"}[row["class"]]
        wrong = {"PA": "LL", "LL": "PA"}[claimed]
        view = [claimed, None, claimed, wrong, claimed][n % 5]
        patient = row["patientid"]
        path = out / f"patient-{patient}" / f"{n:04d}.dcm"
        path.parent.mkdir(exist_ok=True)
        make_dicom(
            path,
            4095 - pixels if mono1 else pixels,
            photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
            transfer_syntax=SYNTAXES[n % len(SYNTAXES)],
            view_position=view,
            patient_id=f"ARCH{patient}",
            study_uid=f"{ROOT_UID}.{n % 100000}",
            sop_uid=f"{ROOT_UID}.{n % 100000}.1",
            modality="CR" if n % 2 else "DX",
        )
        truth.append(
            {
                "file_path": str(path.resolve()),
                "label": row["class"],
                "patient": patient,
                "split": side.get(patient, "none"),
            }
        )
    with (out / "truth.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(truth[0]))
        writer.writeheader()
        writer.writerows(truth)


def score(results_csv: Path, truth_csv: Path) -> None:
    truth = {r["file_path"]: r for r in csv.DictReader(truth_csv.open())}
    results = list(csv.DictReader(results_csv.open()))
    statuses = Counter(r["status"] for r in results)
    hits: dict[str, Counter[str]] = {}
    for row in results:
        known = truth.get(row["file_path"])
        if known is None or row["status"] != "done":
            continue
        per = hits.setdefault(known["split"], Counter())
        per[f"{known['label']}_n"] += 1
        per[f"{known['label']}_right"] += row["label"] == known["label"]
    listed = {r["file_path"] for r in results}
    print(
        f"rows {len(results)}; status {dict(statuses)}; "
        f"files listed {len(listed & set(truth))}/{len(truth)}"
    )
    for split, c in sorted(hits.items()):
        recalls = {k: c[f"{k}_right"] / c[f"{k}_n"] for k in ("frontal", "lateral") if c[f"{k}_n"]}
        balanced = sum(recalls.values()) / len(recalls)
        print(
            f"{split}: frontal {c['frontal_right']}/{c['frontal_n']}, lateral "
            f"{c['lateral_right']}/{c['lateral_n']}, balanced accuracy {balanced:.3f}"
        )


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "build":
        build(Path(args[0]), Path(args[1]))
    elif command == "score":
        score(Path(args[0]), Path(args[1]))
    else:
        sys.exit(__doc__)
