"""Build the demo's sample studies in cxr_orient/samples/ (run once; output committed).

Real radiographs only: RG1 (NEMA CR chest PA, from pydicom-data, MIT) and, from the
COVID-19 image data collection, three patients with a PA and a lateral film each
(CC BY-NC-SA, redistributed with attribution under the same licence), wrapped into
DICOM as an archive would hold them: mixed transfer syntaxes, MONOCHROME1 and 2,
one ViewPosition missing and one wrong. One truncated copy shows a recorded failure.

    python -m scripts.make_demo_samples ../shared/data/covid-cxr

Run from the checkout's root (``-m``): the DICOM writer is :mod:`bench.dicom_factory`,
which is not in the wheel.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from bench.dicom_factory import make_dicom

OUT = Path(__file__).resolve().parents[1] / "cxr_orient" / "samples"
# Patients held out from the shipped model's training (cxr_orient/shipped/split.json):
# patientid -> (study uid suffix, syntaxes for PA and L, header views)
PATIENTS = {
    "177": (1, (JPEG2000Lossless, JPEGLSLossless), ("PA", "LL")),
    "281": (2, (RLELossless, ExplicitVRLittleEndian), ("PA", None)),
    "380": (3, (JPEG2000Lossless, RLELossless), ("LL", "LL")),  # the PA's header lies
}
ROOT_UID = "1.2.826.0.1.3680043.10.1337"


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        grey = image.convert("L")
        grey.thumbnail((1024, 1024))
        return np.rint(np.asarray(grey, dtype=np.float64) / 255 * 4095).astype(np.uint16)


def main(covid_cxr: Path) -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    first: dict[tuple[str, str], dict[str, str]] = {}
    for r in csv.DictReader((covid_cxr / "manifest.csv").open()):
        if r["patientid"] in PATIENTS and r["class"] in ("frontal", "lateral"):
            first.setdefault((r["patientid"], r["class"]), r)
    rows = list(first.values())
    lines = ["# Demo samples: sources and licences", ""]
    for row in sorted(rows, key=lambda r: (r["patientid"], r["class"])):
        suffix, syntaxes, views = PATIENTS[row["patientid"]]
        index = 0 if row["class"] == "frontal" else 1
        pixels = _pixels(covid_cxr / row["file"])
        mono1 = row["patientid"] == "281" and index == 0
        name = f"study{suffix}/{row['class']}.dcm"
        (OUT / name).parent.mkdir(exist_ok=True)
        make_dicom(
            OUT / name,
            4095 - pixels if mono1 else pixels,
            photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
            transfer_syntax=syntaxes[index],
            view_position=views[index],
            patient_id=f"DEMO{suffix}",
            study_uid=f"{ROOT_UID}.{suffix}",
            sop_uid=f"{ROOT_UID}.{suffix}.{index + 1}",
            modality="CR",
        )
        lines.append(
            f"- `{name}`: {row['class']} ({row['view']}); from `{row['source_filename']}`, "
            f"COVID-19 image data collection (Cohen et al. 2020, arXiv:2003.11597), "
            f"source {row['url'] or 'n/a'}; licence {row['license']}. Downsampled, "
            f"wrapped into DICOM; header ViewPosition set to {views[index]!r}."
        )
    rg1 = Path(get_testdata_file("RG1_J2KI.dcm"))
    (OUT / "rg1").mkdir()
    shutil.copy(rg1, OUT / "rg1" / "RG1_J2KI.dcm")
    lines.append(
        "- `rg1/RG1_J2KI.dcm`: RG1, a CR chest PA from the NEMA test set, JPEG 2000 "
        "lossy, MONOCHROME1; from the pydicom-data package (MIT licence)."
    )
    (OUT / "broken").mkdir()
    whole = make_dicom(
        OUT / "broken" / "whole.dcm",
        _pixels(covid_cxr / rows[0]["file"]),
        transfer_syntax=RLELossless,
        view_position="PA",
        patient_id="DEMO9",
        study_uid=f"{ROOT_UID}.9",
        sop_uid=f"{ROOT_UID}.9.1",
        modality="CR",
    )
    data = whole.read_bytes()
    whole.unlink()
    (OUT / "broken" / "truncated.dcm").write_bytes(data[: len(data) // 3])
    lines.append(
        "- `broken/truncated.dcm`: the first third of a DICOM file made from "
        f"`{rows[0]['source_filename']}` (above); it must be recorded as failed "
        "(truncated), not crash anything."
    )
    lines += [
        "",
        "Images licensed CC BY-NC-SA are redistributed here under the same licence, "
        "for non-commercial use, with the attribution above.",
    ]
    (OUT / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/covid-cxr"))
