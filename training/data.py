"""Labelled radiographs from disk, patient ids, and patient-grouped stratified splits.

A training folder holds one subfolder per class, ``frontal/`` and ``lateral/``,
of PNG, JPEG or DICOM files. Every file goes through the same decode path as
inference (:func:`cxr_orient.imaging.load_image_file`), giving grey uint8
``(size, size)`` arrays.

Patient ids come from a manifest CSV (columns ``file`` relative to the folder,
and ``patientid``). Files the manifest does not name count as their own patient.
When one file is listed under several patient ids (the covid-cxr collection has
such records) those ids are merged into one group, so no image can sit on both
sides of a split.

The covid-cxr folder also has ``other/``, images without a view label in the
source. Its ``eye_labels_other.csv`` names the exceptions; every other file
there was judged frontal by eye. Rows labelled ``crop`` (neither view) and
byte-identical duplicates are dropped.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self, TypeVar

import numpy as np

from cxr_orient import LABELS

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "LabelledImages",
    "PatientFilms",
    "Split",
    "grouped_stratified_split",
    "list_labelled_files",
    "load_labelled_folder",
    "load_npz",
    "read_patient_manifest",
    "save_npz",
    "split_around_held_out",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""})
EYE_LABELS_FILE = "eye_labels_other.csv"
MANIFEST_FILE = "manifest.csv"


@dataclass
class LabelledImages:
    """Decoded images with labels, source files and patient groups, index-aligned."""

    images: np.ndarray  # (N, size, size) uint8
    labels: np.ndarray  # (N,) int64, index into LABELS
    files: list[str]  # relative to the data folder
    patients: list[str]  # merged patient group ids

    def __post_init__(self) -> None:
        n = len(self.images)
        if not (len(self.labels) == len(self.files) == len(self.patients) == n):
            raise ValueError("images, labels, files and patients must have the same length")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray | Sequence[int]) -> LabelledImages:
        idx = np.asarray(index, dtype=int)
        return LabelledImages(
            images=self.images[idx],
            labels=self.labels[idx],
            files=[self.files[i] for i in idx],
            patients=[self.patients[i] for i in idx],
        )

    def class_counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(LABELS)}


def _is_image_file(path: Path) -> bool:
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in (IMAGE_SUFFIXES)
    )


def _read_eye_labels(path: Path) -> dict[str, str]:
    """``other/<file>`` -> ``frontal`` | ``lateral`` | ``drop``."""
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            label = (row.get("eye_label") or "").strip().lower()
            note = (row.get("note") or "").lower()
            if "duplicate" in note or label not in LABELS:
                out[row["file"]] = "drop"
            else:
                out[row["file"]] = label
    return out


def list_labelled_files(data_dir: Path) -> list[tuple[str, int]]:
    """``(relative path, label)`` for every usable image under ``data_dir``, sorted."""
    data_dir = Path(data_dir)
    items: list[tuple[str, int]] = []
    for label, name in enumerate(LABELS):
        folder = data_dir / name
        if not folder.is_dir():
            raise FileNotFoundError(f"class folder missing: {folder}")
        items += [
            (p.relative_to(data_dir).as_posix(), label)
            for p in sorted(folder.rglob("*"))
            if _is_image_file(p)
        ]
    other = data_dir / "other"
    eye_labels = data_dir / EYE_LABELS_FILE
    if other.is_dir() and eye_labels.is_file():
        exceptions = _read_eye_labels(eye_labels)
        for p in sorted(other.iterdir()):
            if not _is_image_file(p):
                continue
            rel = p.relative_to(data_dir).as_posix()
            verdict = exceptions.get(rel, "frontal")
            if verdict != "drop":
                items.append((rel, LABELS.index(verdict)))
    return items


def read_patient_manifest(manifest: Path) -> dict[str, set[str]]:
    """``file -> {patient ids}`` from a CSV with columns ``file`` and ``patientid``."""
    mapping: dict[str, set[str]] = {}
    with open(manifest, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or ())
        if not {"file", "patientid"} <= fields:
            raise ValueError(f"{manifest}: needs columns 'file' and 'patientid', has {fields}")
        for row in reader:
            pid = (row["patientid"] or "").strip()
            if pid:
                mapping.setdefault(row["file"].strip(), set()).add(pid)
    return mapping


def _merge_patient_groups(
    files: Sequence[str], file_patients: Mapping[str, Iterable[str]]
) -> list[str]:
    """One group id per file; patient ids that share a file are merged (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    per_file: list[list[str]] = []
    for f in files:
        ids = sorted(file_patients.get(f, ())) or [f"file:{f}"]
        per_file.append(ids)
        for other in ids[1:]:
            ra, rb = find(ids[0]), find(other)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return [find(ids[0]) for ids in per_file]


def load_labelled_folder(
    data_dir: Path,
    *,
    manifest: Path | None = None,
    size: int = 256,
) -> LabelledImages:
    """Decode every usable image under ``data_dir`` to grey uint8 ``(size, size)``.

    ``manifest`` defaults to ``data_dir/manifest.csv`` when that exists. Files that
    fail to decode are logged and skipped, never silently mislabelled.
    """
    # Imported here: the decode stack (pydicom and codecs) is not needed to train
    # from an already decoded .npz, e.g. on the GPU machine.
    from cxr_orient.imaging import load_image_file

    data_dir = Path(data_dir)
    if manifest is None and (data_dir / MANIFEST_FILE).is_file():
        manifest = data_dir / MANIFEST_FILE
    file_patients = read_patient_manifest(manifest) if manifest is not None else {}

    images: list[np.ndarray] = []
    labels: list[int] = []
    files: list[str] = []
    for rel, label in list_labelled_files(data_dir):
        try:
            img = load_image_file(data_dir / rel, size=size)
        except Exception as e:  # a bad file must not end a training run
            logger.warning("skipping %s: %s", rel, e)
            continue
        images.append(np.asarray(img, dtype=np.uint8))
        labels.append(label)
        files.append(rel)
    if not images:
        raise ValueError(f"no usable images under {data_dir}")
    unnamed = sum(1 for f in files if f not in file_patients)
    if manifest is not None and unnamed:
        logger.warning(
            "%d files have no patient id in %s; each is its own patient", unnamed, manifest
        )
    return LabelledImages(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        files=files,
        patients=_merge_patient_groups(files, file_patients),
    )


def save_npz(data: LabelledImages, path: Path) -> None:
    """Compressed cache of decoded images (for carrying to another machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        images=data.images,
        labels=data.labels,
        files=np.asarray(json.dumps(data.files)),
        patients=np.asarray(json.dumps(data.patients)),
    )


def load_npz(path: Path) -> LabelledImages:
    with np.load(path, allow_pickle=False) as z:
        return LabelledImages(
            images=z["images"],
            labels=z["labels"].astype(np.int64),
            files=list(json.loads(str(z["files"]))),
            patients=list(json.loads(str(z["patients"]))),
        )


@dataclass(frozen=True)
class Split:
    """Index arrays into one dataset, grouped by patient."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def as_patients(self, patients: Sequence[str]) -> dict[str, list[str]]:
        return {
            name: sorted({patients[i] for i in getattr(self, name)})
            for name in ("train", "val", "test")
        }


def grouped_stratified_split(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str],
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> Split:
    """Split by patient: no patient is on two sides.

    Patients are stratified by whether they have any lateral image, so each side
    gets its share of the rare class. Within each stratum patients are shuffled
    (seeded) and dealt so that each side's share of *patients* is close to
    ``fractions``; a side left with zero patients of a stratum that has at least
    three gets one.
    """
    y = np.asarray(labels).astype(int)
    if len(y) != len(groups):
        raise ValueError("labels and groups must have the same length")
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    by_patient: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_patient.setdefault(g, []).append(i)
    has_lateral = {g: bool((y[idx] == 1).any()) for g, idx in by_patient.items()}

    rng = np.random.default_rng(seed)
    sides: list[list[str]] = [[], [], []]
    for stratum in (True, False):
        members = sorted(g for g, lat in has_lateral.items() if lat is stratum)
        rng.shuffle(members)
        n = len(members)
        counts = [round(f * n) for f in fractions[1:]]
        for k in range(2):
            if counts[k] == 0 and n >= 3 and fractions[k + 1] > 0:
                counts[k] = 1
        n_val, n_test = counts
        n_train = n - n_val - n_test
        if n_train < 0:
            raise ValueError("too few patients for the requested fractions")
        sides[0] += members[:n_train]
        sides[1] += members[n_train : n_train + n_val]
        sides[2] += members[n_train + n_val :]

    def indices(patients: list[str]) -> np.ndarray:
        idx = [i for g in patients for i in by_patient[g]]
        return np.asarray(sorted(idx), dtype=int)

    return Split(train=indices(sides[0]), val=indices(sides[1]), test=indices(sides[2]))


class PatientFilms(Protocol):
    """Films index-aligned with a binary target ``y`` and their patients: a head's
    training set (:class:`training.projection.ProjectionSet`,
    :class:`training.scope_refit.ScopeSet`)."""

    y: np.ndarray
    patients: list[str]

    def subset(self, index: np.ndarray) -> Self: ...


FilmsT = TypeVar("FilmsT", bound=PatientFilms)


def split_around_held_out(
    films: FilmsT, *, held_out: Sequence[bool], validation_fraction: float, seed: int
) -> tuple[FilmsT, FilmsT, FilmsT]:
    """``(train, validation, held out)`` by patient: ``held_out`` marks the fixed
    evaluation split's films; the others are split ``1 - validation_fraction`` /
    ``validation_fraction`` by :func:`grouped_stratified_split`, stratified by whether a
    patient has a film whose ``y`` is 1."""
    mask = np.asarray(held_out, dtype=bool)
    rest = np.flatnonzero(~mask)
    inner = grouped_stratified_split(
        films.y[rest].astype(int),
        [films.patients[i] for i in rest],
        fractions=(1.0 - validation_fraction, validation_fraction, 0.0),
        seed=seed,
    )
    return (
        films.subset(rest[inner.train]),
        films.subset(rest[inner.val]),
        films.subset(np.flatnonzero(mask)),
    )
