"""Train THE SHIPPED MODEL (``compact-v1``) on the covid-cxr collection.

    python -m training.ship                       # decode, train, evaluate, write
    python -m training.ship --make-npz .devdata/covid-cxr-256.npz   # decode only
    python -m training.ship --npz .devdata/covid-cxr-256.npz --out OUT --report OUT/report

The split is fixed by ``--seed``: ~70 % of patients train, ~15 % validation
(early stopping, temperature, review threshold), ~15 % test, stratified by whether
a patient has a lateral film. The test patients are evaluated once, as they are
and rotated by 90/180/270 degrees, flipped and inverted.

Decoding needs :mod:`cxr_orient.imaging` (pydicom); training from ``--npz`` does not,
so the same script runs where only Keras and a backend are installed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import platform
import time
from pathlib import Path

import keras
import numpy as np

from cxr_orient.modelstore import TTA_MODES, Classifier, save_checkpoint
from training.cli_train import calibrate_classifier, summarise, train_and_evaluate
from training.data import (
    LabelledImages,
    grouped_stratified_split,
    load_labelled_folder,
    load_npz,
    save_npz,
)
from training.evaluate import robustness
from training.report import write_figures, write_json

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "covid-cxr"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "cxr_orient" / "shipped"
DEFAULT_REPORT = Path(__file__).resolve().parent.parent / "docs" / "figures" / "compact-v1"
NAME = "compact-v1"
ARCHITECTURE = "compact"
#: Licences under which an image may appear in a committed figure.
_SHOWABLE_LICENCES = ("CC BY", "CC BY 3.0", "CC BY 4.0", "CC BY-NC-SA", "CC BY-NC-SA 4.0",
                      "CC BY-SA")


def _licences(manifest: Path | None) -> dict[str, tuple[str, str]]:
    """file -> (licence, source url), from the covid-cxr manifest if available."""
    if manifest is None or not manifest.is_file():
        return {}
    with open(manifest, newline="", encoding="utf-8") as fh:
        return {row["file"]: (row.get("license", "").strip(), row.get("url", "").strip())
                for row in csv.DictReader(fh)}


def ship(
    data: LabelledImages,
    *,
    out_dir: Path,
    report_dir: Path,
    epochs: int,
    seed: int,
    batch_size: int,
    manifest: Path | None,
    verbose: int | str,
    min_epochs: int = 90,
    test_time_augmentation: str = "dihedral+invert",
) -> None:
    split = grouped_stratified_split(data.labels, data.patients, seed=seed)
    licences = _licences(manifest)
    test_files = [data.files[i] for i in split.test]
    grid_mask = np.asarray([licences.get(f, ("", ""))[0] in _SHOWABLE_LICENCES
                            for f in test_files])
    started = time.monotonic()
    run = train_and_evaluate(
        data, split, name=NAME, out_dir=out_dir, report_dir=report_dir,
        architecture=ARCHITECTURE, epochs=epochs, seed=seed, batch_size=batch_size,
        grid_mask=grid_mask, verbose=verbose, min_epochs=min_epochs,
        test_time_augmentation=test_time_augmentation,
        extra_training={
            "data": "covid-cxr (ieee8023/covid-chestxray-dataset, June 2020 snapshot)",
            "backend": keras.backend.backend(),
            "machine": platform.node(),
            "split": "patient-grouped 70/15/15, stratified by has-lateral, see split.json",
        },
    )
    elapsed = time.monotonic() - started
    write_json(out_dir / "split.json", {
        "seed": seed,
        "fractions": [0.7, 0.15, 0.15],
        "stratified_by": "patient has any lateral image",
        "patients": split.as_patients(data.patients),
        "files": {k: sorted(data.files[i] for i in getattr(split, k))
                  for k in ("train", "val", "test")},
    })
    shown = [f for f, keep in zip(test_files, grid_mask, strict=True) if keep]
    write_json(report_dir / "model_card_figures.json", {
        "model": NAME,
        "architecture": ARCHITECTURE,
        "params": int(sum(int(np.prod(w.shape)) for w in
                          keras.saving.load_model(run.checkpoint, compile=False).weights)),
        "sha256": run.card.sha256,
        "temperature": run.card.temperature,
        "review_threshold": run.card.review_threshold,
        "training": run.card.training,
        "train_and_evaluate_seconds": round(elapsed, 1),
        "held_out_test": summarise(run.test_metrics),
        "robustness": {k: summarise(v) for k, v in run.robustness.items()},
        "prediction_grid_sources": {f: licences.get(f, ("", "")) for f in shown},
    })
    logger.info("shipped %s: %s", NAME, run.checkpoint)


def finalize(
    data: LabelledImages, *, out_dir: Path, report_dir: Path, test_time_augmentation: str,
    manifest: Path | None, seed: int,
) -> None:
    """Set the test-time augmentation of a trained checkpoint, refit its calibration on the
    validation patients, re-evaluate the test patients, and rewrite card and report.

    The checkpoint is re-saved without optimizer state (inference never needs it).
    """
    split_doc = json.loads((out_dir / "split.json").read_text(encoding="utf-8"))
    index = {f: i for i, f in enumerate(data.files)}
    val = data.subset([index[f] for f in split_doc["files"]["val"]])
    test = data.subset([index[f] for f in split_doc["files"]["test"]])
    checkpoint = out_dir / f"{NAME}.keras"
    classifier = Classifier.from_checkpoint(checkpoint)
    card = classifier.card
    card.test_time_augmentation = test_time_augmentation
    calibrate_classifier(classifier, val.images, val.labels)
    variants = robustness(classifier, test.images, test.labels, groups=test.patients, seed=seed)
    card.metrics = {
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
    figures.update({
        "sha256": card.sha256, "temperature": card.temperature,
        "review_threshold": card.review_threshold,
        "test_time_augmentation": test_time_augmentation,
        "held_out_test": summarise(variants["original"]),
        "robustness": {k: summarise(v) for k, v in variants.items()},
    })
    write_json(report_dir / "model_card_figures.json", figures)
    write_json(report_dir / "summary.json", {
        "held_out_test": summarise(variants["original"]),
        "robustness": {k: summarise(v) for k, v in variants.items()},
        "training": card.training, "temperature": card.temperature,
        "review_threshold": card.review_threshold,
        "test_time_augmentation": test_time_augmentation,
    })
    replot(data, report_dir, manifest, seed)


def replot(data: LabelledImages, report_dir: Path, manifest: Path | None, seed: int) -> None:
    """Draw the figures from a report's metrics.json (for runs where matplotlib was missing)."""
    doc = json.loads((report_dir / "metrics.json").read_text(encoding="utf-8"))
    index = {f: i for i, f in enumerate(data.files)}
    test = np.asarray([index[f] for f in doc["test_files"]], dtype=int)
    licences = _licences(manifest)
    grid_mask = np.asarray([licences.get(f, ("", ""))[0] in _SHOWABLE_LICENCES
                            for f in doc["test_files"]])
    write_figures(
        report_dir, history=doc["history"], images=data.images[test],
        y_true=data.labels[test], p_lateral=np.asarray(doc["held_out_test"]["p_lateral"]),
        grid_mask=grid_mask, seed=seed,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.ship", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="covid-cxr folder (frontal/, lateral/, other/, manifest.csv)")
    parser.add_argument("--npz", type=Path, default=None,
                        help="already decoded images (from --make-npz) instead of --data")
    parser.add_argument("--make-npz", type=Path, default=None,
                        help="decode --data into this .npz and stop")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="manifest.csv for image licences (default: --data/manifest.csv)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=20200601)
    parser.add_argument("--min-epochs", type=int, default=90,
                        help="epochs before early stopping may stop the run")
    parser.add_argument("--tta", choices=TTA_MODES, default="dihedral+invert",
                        help="test-time augmentation recorded in the card")
    parser.add_argument("--finalize", action="store_true",
                        help="only apply --tta to the checkpoint in --out, recalibrate on the "
                        "validation patients, re-evaluate and rewrite card and report")
    parser.add_argument("--replot", action="store_true",
                        help="only draw the figures of an existing --report from its metrics.json")
    parser.add_argument("--verbose", default="2", help="Keras fit verbosity: 0, 1, 2 or auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")

    data = load_npz(args.npz) if args.npz is not None else load_labelled_folder(args.data)
    logger.info("%d images, %d patient groups, %s", len(data), len(set(data.patients)),
                data.class_counts())
    if args.make_npz is not None:
        save_npz(data, args.make_npz)
        return
    manifest = args.manifest or (args.data / "manifest.csv")
    if args.finalize:
        finalize(data, out_dir=args.out, report_dir=args.report,
                 test_time_augmentation=args.tta, manifest=manifest, seed=args.seed)
        return
    if args.replot:
        replot(data, args.report, manifest, args.seed)
        return
    verbose: int | str = int(args.verbose) if args.verbose.isdigit() else args.verbose
    ship(data, out_dir=args.out, report_dir=args.report, epochs=args.epochs, seed=args.seed,
         batch_size=args.batch_size, manifest=manifest, verbose=verbose,
         min_epochs=args.min_epochs, test_time_augmentation=args.tta)


if __name__ == "__main__":
    main()
