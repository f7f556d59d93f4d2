"""Named archive mixes, and sets of films drawn from them, long enough for steady state.

The bench corpus weighs every transfer syntax equally; an archive does not. A mix names
the syntaxes an archive of CR/DX films holds and their shares (:data:`MIXES`, each with
where its weights come from). :func:`archive_set` draws ``films`` films from a mix:
each film is one of the corpus files of its syntax, recorded under fresh SOP, series
and study UIDs (two films a study) with the file's own bytes, hash and header, the way
a network source records what it received (:func:`cxr_orient.ingest.enqueue_scanned`):
10,000 films need the disk of the few corpus files only, and every film is still read,
checked against its hash, decoded, predicted and recorded by the worker.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.corpus import CorpusItem

__all__ = ["MIXES", "Mix", "archive_set", "parse_mix", "record_archive"]


@dataclass(frozen=True)
class Mix:
    """Shares of an archive by transfer syntax (corpus names), summing to 1."""

    name: str
    weights: Mapping[str, float]
    source: str

    def counts(self, films: int) -> dict[str, int]:
        """Films of each syntax in a set of ``films`` (largest remainders)."""
        total = sum(self.weights.values())
        exact = {k: films * w / total for k, w in self.weights.items()}
        counts = {k: int(v) for k, v in exact.items()}
        for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True):
            if sum(counts.values()) >= films:
                break
            counts[k] += 1
        return counts


MIXES: dict[str, Mix] = {
    "lossless-archive": Mix(
        "lossless-archive",
        {"jpeg-lossless": 0.60, "j2k-lossless": 0.25, "explicit-le": 0.15},
        "An assumption, not a census: CR and DX films are most often archived in JPEG "
        "Lossless SV1 (1.2.840.10008.1.2.4.70; issue 23, the DICOM default lossless "
        "syntax that modalities and PACS compress to), JPEG 2000 lossless where the PACS "
        "transcodes to it, and uncompressed explicit little endian as sent by modalities "
        "that do not compress. Weights 0.60 / 0.25 / 0.15; a site replaces them with its "
        "own census (--mix NAME=syntax:weight,...).",
    ),
    "lossy-archive": Mix(
        "lossy-archive",
        {"jpeg-baseline": 0.50, "j2k-lossy": 0.30, "htj2k-lossy": 0.20},
        "An assumption, not a census: archives that keep lossy copies (teleradiology, "
        "long-term tiers, research exports) hold JPEG baseline most, JPEG 2000 lossy, and "
        "HTJ2K in the newest (DICOM 2023 syntaxes). Weights 0.50 / 0.30 / 0.20; replace "
        "with a site's census.",
    ),
}


def parse_mix(text: str) -> Mix:
    """``NAME=syntax:weight,syntax:weight`` -> :class:`Mix` (a site's own census)."""
    name, _, body = text.partition("=")
    weights: dict[str, float] = {}
    for part in body.split(","):
        syntax, _, weight = part.strip().partition(":")
        if not syntax or not weight:
            raise ValueError(f"--mix {text!r}: expected NAME=syntax:weight,...")
        weights[syntax.strip()] = float(weight)
    if not name or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
        raise ValueError(f"--mix {text!r}: expected NAME=syntax:weight,...")
    return Mix(name.strip(), weights, "given on the command line")


def archive_set(
    items: Sequence[CorpusItem], mix: Mix, films: int, *, seed: int = 0
) -> list[tuple[CorpusItem, int]]:
    """``films`` (corpus item, study number) pairs in the mix's shares, shuffled (an
    archive's order is no syntax's order); two films a study, frontal and lateral where
    the syntax has both. Raises if the corpus lacks a syntax of the mix."""
    by_syntax = {name: [i for i in items if i.syntax == name] for name in mix.weights}
    missing = [name for name, chosen in by_syntax.items() if not chosen]
    if missing:
        raise ValueError(f"mix {mix.name}: no corpus files of {missing}")
    picked: list[CorpusItem] = []
    for name, count in mix.counts(films).items():
        views = (
            [i for i in by_syntax[name] if i.view == "frontal"] or by_syntax[name],
            [i for i in by_syntax[name] if i.view == "lateral"] or by_syntax[name],
        )
        for k in range(count):
            chosen = views[k % 2]
            picked.append(chosen[(k // 2) % len(chosen)])
    pairs = [picked[k : k + 2] for k in range(0, len(picked), 2)]
    random.Random(seed).shuffle(pairs)
    return [(item, study) for study, pair in enumerate(pairs) for item in pair]


def record_archive(films: Sequence[tuple[CorpusItem, int]], *, tag: str) -> list[int]:
    """Record every film (queued, not sent) and return the instance ids in order: each
    corpus file is read, hashed and parsed once, each film gets fresh UIDs."""
    from pydicom.uid import generate_uid

    from cxr_orient.ingest import ScannedFile, enqueue_scanned, scan_file
    from cxr_orient.settings import get_settings

    settings = get_settings()
    scanned: dict[Path, ScannedFile] = {}
    records: list[ScannedFile] = []
    study_uids: dict[int, str] = {}
    for item, study in films:
        base = scanned.get(item.path)
        if base is None:
            base = scanned[item.path] = scan_file(item.path, settings)
            if base.header is None or base.refusal is not None:
                raise ValueError(f"{item.path}: not accepted ({base.error or base.refusal})")
        assert base.header is not None
        study_uid = study_uids.setdefault(study, generate_uid())
        header = dataclasses.replace(
            base.header,
            sop_instance_uid=generate_uid(),
            series_instance_uid=generate_uid(),
            study_instance_uid=study_uid,
            patient_id=f"{tag}-{study}",
        )
        records.append(dataclasses.replace(base, header=header))
    report = enqueue_scanned(records, send=None, settings=settings)
    if len(report.queued) != len(records):
        raise RuntimeError(
            f"recorded {len(report.queued)} of {len(records)} films "
            f"({len(report.uid_conflicts)} conflicts, {len(report.refused)} "
            "refused)"
        )
    return list(report.queued)
