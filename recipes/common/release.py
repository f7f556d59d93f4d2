"""The release of a view model: candidates trained on the covid-cxr collection, the
best on validation shipped with its card, split and report.

What :mod:`recipes.compact_v1` and :mod:`recipes.compact_invariant_64_v1` share; each
names its checkpoint and the candidates it was chosen from (a :class:`Release`) and
calls :func:`main`.

The split is fixed by ``--split-seed``: ~70 % of patients train, ~15 % validation
(early stopping, temperature, review threshold, choice between candidates), ~15 %
test, stratified by whether a patient has a lateral film. The test patients are
evaluated as they are and rotated by 90/180/270 degrees, flipped and inverted; those
figures are reported, never used to choose.

With several candidates (``ARCH:SEED``), each trains in its own process (``--jobs`` at
a time, sharing one GPU), and the one shipped is the best on the validation patients
over all 16 dihedral x inversion views (:func:`training.gate.selection_key`): highest
mean lateral recall, then highest mean balanced accuracy, then lowest mean NLL after
each candidate's own temperature scaling. With ``--student``, models distilled from all
the candidates compete under the same rule.

Decoding needs :mod:`cxr_orient.imaging` (pydicom); training from ``--npz`` does not,
so the same recipe runs where only Keras and a backend are installed.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr_orient.modelstore import Classifier, save_checkpoint
from cxr_orient.settings import get_settings
from recipes.common.release_args import release_parser
from training.candidate import summarise, train_and_evaluate
from training.data import (
    LabelledImages,
    grouped_stratified_split,
    load_labelled_folder,
    load_npz,
    save_npz,
)
from training.evaluate import robustness
from training.gate import selection_key
from training.report import write_figures, write_json
from training.train import calibrate

logger = logging.getLogger(__name__)

__all__ = ["Release", "finalize", "main", "replot", "ship", "ship_candidates"]


@dataclass(frozen=True)
class Release:
    """A shipped view model and how it was chosen."""

    #: The checkpoint's name (``NAME.keras``, ``NAME.json``, ``docs/figures/NAME/``).
    name: str
    #: The recipe's module: ``python -m MODULE`` runs it, each candidate's process too.
    module: str
    #: The candidates it was chosen from, ``ARCH:SEED``, used when neither
    #: ``--candidate`` nor ``--architecture`` is given.
    candidates: tuple[str, ...]
    #: The recipe's own description (its ``--help``).
    doc: str


#: Licences under which an image may appear in a committed figure.
_SHOWABLE_LICENCES = (
    "CC BY",
    "CC BY 3.0",
    "CC BY 4.0",
    "CC BY-NC-SA",
    "CC BY-NC-SA 4.0",
    "CC BY-SA",
)


def _licences(manifest: Path | None) -> dict[str, tuple[str, str]]:
    """file -> (licence, source url), from the covid-cxr manifest if available."""
    if manifest is None or not manifest.is_file():
        return {}
    with open(manifest, newline="", encoding="utf-8") as fh:
        return {
            row["file"]: (row.get("license", "").strip(), row.get("url", "").strip())
            for row in csv.DictReader(fh)
        }


def ship(
    data: LabelledImages,
    release: Release,
    *,
    architecture: str,
    out_dir: Path,
    report_dir: Path,
    epochs: int,
    seed: int,
    batch_size: int,
    manifest: Path | None,
    verbose: int | str,
    min_epochs: int = 90,
    test_time_augmentation: str = "none",
    split_seed: int | None = None,
    workers: int = 1,
    time_budget_s: float | None = None,
    teacher_paths: Sequence[Path] = (),
    distill_weight: float = 0.5,
    imagenet_weights_dir: Path | None = None,
) -> None:
    split_seed = seed if split_seed is None else split_seed
    split = grouped_stratified_split(data.labels, data.patients, seed=split_seed)
    licences = _licences(manifest)
    test_files = [data.files[i] for i in split.test]
    grid_mask = np.asarray([licences.get(f, ("", ""))[0] in _SHOWABLE_LICENCES for f in test_files])
    started = time.monotonic()
    run = train_and_evaluate(
        data,
        split,
        name=release.name,
        out_dir=out_dir,
        report_dir=report_dir,
        architecture=architecture,
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        grid_mask=grid_mask,
        verbose=verbose,
        min_epochs=min_epochs,
        test_time_augmentation=test_time_augmentation,
        workers=workers,
        time_budget_s=time_budget_s,
        teacher_paths=teacher_paths,
        distill_weight=distill_weight,
        imagenet_weights_dir=imagenet_weights_dir,
        extra_training={
            "data": "covid-cxr (ieee8023/covid-chestxray-dataset, June 2020 snapshot)",
            "backend": keras.backend.backend(),
            "machine": platform.node(),
            "device": _device(),
            "split": "patient-grouped 70/15/15, stratified by has-lateral, see split.json",
            "split_seed": split_seed,
            "command": shlex.join(["python", "-m", release.module, *sys.argv[1:]]),
        },
    )
    elapsed = time.monotonic() - started
    write_json(
        out_dir / "split.json",
        {
            "seed": split_seed,
            "fractions": [0.7, 0.15, 0.15],
            "stratified_by": "patient has any lateral image",
            "patients": split.as_patients(data.patients),
            "files": {
                k: sorted(data.files[i] for i in getattr(split, k))
                for k in ("train", "val", "test")
            },
        },
    )
    shown = [f for f, keep in zip(test_files, grid_mask, strict=True) if keep]
    write_json(
        report_dir / "model_card_figures.json",
        {
            "model": release.name,
            "architecture": architecture,
            "params": int(
                sum(
                    int(np.prod(w.shape))
                    for w in keras.saving.load_model(run.checkpoint, compile=False).weights
                )
            ),
            "sha256": run.card.sha256,
            "temperature": run.card.temperature,
            "review_threshold": run.card.review_threshold,
            "training": run.card.training,
            "train_and_evaluate_seconds": round(elapsed, 1),
            "test_time_augmentation": test_time_augmentation,
            "validation_16_views": run.card.metrics.get("validation_16_views", {}),
            "held_out_test": summarise(run.test_metrics),
            "robustness": {k: summarise(v) for k, v in run.robustness.items()},
            "prediction_grid_sources": {f: licences.get(f, ("", "")) for f in shown},
        },
    )
    logger.info("shipped %s: %s", release.name, run.checkpoint)


def _device() -> str:
    """What the backend computes on, e.g. ``NVIDIA H100 80GB HBM3`` or ``cpu``."""
    try:
        if keras.backend.backend() == "jax":
            jax = importlib.import_module("jax")
            return str(jax.devices()[0].device_kind)
    except Exception:  # pragma: no cover - informational only
        pass
    return platform.processor() or "cpu"


def _train_all(
    candidates: Sequence[tuple[str, int]],
    *,
    module: str,
    base_args: list[str],
    work_dir: Path,
    jobs: int,
    prefix: str = "",
    extra_args: Sequence[str] = (),
) -> tuple[dict[str, Path], list[str]]:
    """Train each ``(architecture, seed)`` in its own ``python -m MODULE`` process,
    ``jobs`` at a time; returns each candidate's folder and the keys of those that failed."""
    work_dir.mkdir(parents=True, exist_ok=True)
    pending = list(candidates)
    running: list[tuple[str, subprocess.Popen[bytes], Any]] = []
    dirs: dict[str, Path] = {}
    failed: list[str] = []
    while pending or running:
        while pending and len(running) < max(1, jobs):
            arch, seed = pending.pop(0)
            key = f"{prefix}{arch}-{seed}"
            cdir = work_dir / key
            cdir.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable,
                "-m",
                module,
                *base_args,
                "--architecture",
                arch,
                "--seed",
                str(seed),
                "--out",
                str(cdir),
                "--report",
                str(cdir / "report"),
                *extra_args,
            ]
            log = open(cdir / "train.log", "wb")  # noqa: SIM115 - closed when it ends
            logger.info("candidate %s: %s", key, shlex.join(cmd))
            running.append((key, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
            dirs[key] = cdir
        time.sleep(1.0)
        for item in list(running):
            key, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                if proc.returncode != 0:
                    failed.append(key)
                    logger.error(
                        "candidate %s failed (exit %d), see %s",
                        key,
                        proc.returncode,
                        dirs[key] / "train.log",
                    )
                else:
                    logger.info("candidate %s done", key)
    return dirs, failed


def ship_candidates(
    release: Release,
    candidates: list[tuple[str, int]],
    *,
    base_args: list[str],
    out_dir: Path,
    report_dir: Path,
    work_dir: Path,
    jobs: int,
    students: Sequence[tuple[str, int]] = (),
    distill_weight: float = 0.5,
) -> dict[str, Any]:
    """Train each ``(architecture, seed)`` in its own ``python -m MODULE`` process
    (``jobs`` at a time), then each of ``students`` distilled from all of them that
    succeeded; choose on validation among all (:func:`selection_key`), and copy the
    chosen checkpoint, card, split and report into ``out_dir`` / ``report_dir``."""
    started = time.monotonic()
    name = release.name
    dirs, failed = _train_all(
        candidates, module=release.module, base_args=base_args, work_dir=work_dir, jobs=jobs
    )
    teachers = [dirs[k] / f"{name}.keras" for k in dirs if k not in failed]
    if students and teachers:
        teacher_args = [a for t in teachers for a in ("--teacher", str(t))]
        more, more_failed = _train_all(
            students,
            module=release.module,
            base_args=base_args,
            work_dir=work_dir,
            jobs=jobs,
            prefix="distilled-",
            extra_args=[*teacher_args, "--distill-weight", str(distill_weight)],
        )
        dirs.update(more)
        failed.extend(more_failed)
    scores: dict[str, dict[str, Any]] = {}
    for key, cdir in dirs.items():
        if key in failed:
            continue
        card = json.loads((cdir / f"{name}.json").read_text(encoding="utf-8"))
        val = card["metrics"].get("validation_16_views", {})
        scores[key] = {
            "validation_16_views": val,
            "epochs_run": card["training"].get("epochs_run"),
            "best_epoch": card["training"].get("best_epoch"),
            "seconds": card["training"].get("seconds"),
            "stopped_by_time_budget": card["training"].get("stopped_by_time_budget"),
            "temperature": card.get("temperature"),
            "distilled_from": [t["file"] for t in card["training"].get("distilled_from", [])],
        }
    if not scores:
        raise SystemExit("every candidate failed")
    chosen = max(scores, key=lambda k: selection_key(scores[k]["validation_16_views"]))
    selection = {
        "rule": "validation patients, all 16 dihedral x inversion views: highest mean lateral "
        "recall, then highest mean balanced accuracy (both at p >= 0.5), then lowest "
        "mean NLL after the candidate's own temperature scaling",
        "chosen": chosen,
        "candidates": scores,
        "failed": failed,
        "wall_seconds": round(time.monotonic() - started, 1),
        "command": shlex.join(["python", "-m", release.module, *sys.argv[1:]]),
        "device": _device(),
    }
    logger.info("chose %s of %s", chosen, sorted(scores))
    src = dirs[chosen]
    out_dir.mkdir(parents=True, exist_ok=True)
    for file in (f"{name}.keras", "split.json"):
        shutil.copy2(src / file, out_dir / file)
    card_doc = json.loads((src / f"{name}.json").read_text(encoding="utf-8"))
    card_doc["training"]["selection"] = selection
    (out_dir / f"{name}.json").write_text(json.dumps(card_doc, indent=2) + "\n", encoding="utf-8")
    if report_dir.exists():
        shutil.rmtree(report_dir)
    shutil.copytree(src / "report", report_dir)
    figures = json.loads((report_dir / "model_card_figures.json").read_text(encoding="utf-8"))
    figures["selection"] = selection
    write_json(report_dir / "model_card_figures.json", figures)
    write_json(report_dir / "selection.json", selection)
    return selection


def finalize(
    data: LabelledImages,
    release: Release,
    *,
    out_dir: Path,
    report_dir: Path,
    test_time_augmentation: str,
    manifest: Path | None,
    seed: int,
) -> None:
    """Set the test-time augmentation of a trained checkpoint, refit its calibration on the
    validation patients, re-evaluate the test patients, and rewrite card and report.

    The checkpoint is re-saved without optimizer state (inference never needs it).
    """
    split_doc = json.loads((out_dir / "split.json").read_text(encoding="utf-8"))
    index = {f: i for i, f in enumerate(data.files)}
    val = data.subset([index[f] for f in split_doc["files"]["val"]])
    test = data.subset([index[f] for f in split_doc["files"]["test"]])
    checkpoint = out_dir / f"{release.name}.keras"
    classifier = Classifier.from_checkpoint(checkpoint)
    card = classifier.card
    card.test_time_augmentation = test_time_augmentation
    card.temperature, card.review_threshold = calibrate(classifier, val.images, val.labels)
    variants = robustness(classifier, test.images, test.labels, groups=test.patients, seed=seed)
    card.metrics = {
        "validation_16_views": card.metrics.get("validation_16_views", {}),
        "held_out_test": summarise(variants["original"]),
        "robustness": {
            k: {m: v[m] for m in ("balanced_accuracy", "lateral_recall", "frontal_recall")}
            for k, v in variants.items()
        },
    }
    save_checkpoint(classifier.model, card, out_dir)
    metrics_doc = json.loads((report_dir / "metrics.json").read_text(encoding="utf-8"))
    metrics_doc["card"] = {k: v for k, v in vars(card).items() if k != "metrics"}
    metrics_doc["held_out_test"] = variants["original"]
    metrics_doc["robustness"] = {k: v for k, v in variants.items() if k != "original"}
    write_json(report_dir / "metrics.json", metrics_doc)
    figures = json.loads((report_dir / "model_card_figures.json").read_text(encoding="utf-8"))
    figures.update(
        {
            "sha256": card.sha256,
            "temperature": card.temperature,
            "review_threshold": card.review_threshold,
            "test_time_augmentation": test_time_augmentation,
            "held_out_test": summarise(variants["original"]),
            "robustness": {k: summarise(v) for k, v in variants.items()},
        }
    )
    write_json(report_dir / "model_card_figures.json", figures)
    write_json(
        report_dir / "summary.json",
        {
            "held_out_test": summarise(variants["original"]),
            "robustness": {k: summarise(v) for k, v in variants.items()},
            "training": card.training,
            "temperature": card.temperature,
            "review_threshold": card.review_threshold,
            "test_time_augmentation": test_time_augmentation,
        },
    )
    replot(data, report_dir, manifest, seed)


def replot(data: LabelledImages, report_dir: Path, manifest: Path | None, seed: int) -> None:
    """Draw the figures from a report's metrics.json (for runs where matplotlib was missing)."""
    doc = json.loads((report_dir / "metrics.json").read_text(encoding="utf-8"))
    index = {f: i for i, f in enumerate(data.files)}
    test = np.asarray([index[f] for f in doc["test_files"]], dtype=int)
    licences = _licences(manifest)
    grid_mask = np.asarray(
        [licences.get(f, ("", ""))[0] in _SHOWABLE_LICENCES for f in doc["test_files"]]
    )
    write_figures(
        report_dir,
        history=doc["history"],
        images=data.images[test],
        y_true=data.labels[test],
        p_lateral=np.asarray(doc["held_out_test"]["p_lateral"]),
        grid_mask=grid_mask,
        seed=seed,
    )


def main(release: Release, argv: list[str] | None = None) -> None:
    """The recipe's command line: train, choose and write ``release``'s checkpoint."""
    parser = release_parser(release.module, release.doc, release.name, release.candidates)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    data = load_npz(args.npz) if args.npz is not None else load_labelled_folder(args.data)
    logger.info(
        "%d images, %d patient groups, %s", len(data), len(set(data.patients)), data.class_counts()
    )
    if args.make_npz is not None:
        save_npz(data, args.make_npz)
        return
    manifest = args.manifest or (args.data / "manifest.csv")
    if args.finalize:
        finalize(
            data,
            release,
            out_dir=args.out,
            report_dir=args.report,
            test_time_augmentation=args.tta,
            manifest=manifest,
            seed=args.seed,
        )
        return
    if args.replot:
        replot(data, args.report, manifest, args.seed)
        return
    verbose: int | str = int(args.verbose) if args.verbose.isdigit() else args.verbose
    if args.architecture is None:
        chosen_from = args.candidate or list(release.candidates)
        candidates = [(c.split(":")[0], int(c.split(":")[1])) for c in chosen_from]
        base = [
            *(["--npz", str(args.npz)] if args.npz is not None else ["--data", str(args.data)]),
            "--manifest",
            str(manifest),
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
            "--split-seed",
            str(args.split_seed),
            "--min-epochs",
            str(args.min_epochs),
            "--tta",
            args.tta,
            "--workers",
            str(args.workers),
            "--verbose",
            str(args.verbose),
            *(["--time-budget", str(args.time_budget)] if args.time_budget else []),
        ]
        work = args.work or Path(tempfile.mkdtemp(prefix="cxr-orient-ship-"))
        students = [(c.split(":")[0], int(c.split(":")[1])) for c in args.student]
        ship_candidates(
            release,
            candidates,
            base_args=base,
            out_dir=args.out,
            report_dir=args.report,
            work_dir=work,
            jobs=args.jobs,
            students=students,
            distill_weight=args.distill_weight,
        )
        return
    ship(
        data,
        release,
        architecture=args.architecture,
        out_dir=args.out,
        report_dir=args.report,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        manifest=manifest,
        verbose=verbose,
        min_epochs=args.min_epochs,
        test_time_augmentation=args.tta,
        split_seed=args.split_seed,
        workers=args.workers,
        time_budget_s=args.time_budget,
        teacher_paths=args.teacher,
        distill_weight=args.distill_weight,
        imagenet_weights_dir=get_settings().training.imagenet_weights_dir,
    )
