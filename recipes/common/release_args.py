"""The release recipes' command line (:func:`recipes.common.release.main`): its options."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from cxr_orient.modelstore import TTA_MODES
from recipes.common.devdata import COVID_CXR, FIGURES, SHIPPED

__all__ = ["release_parser"]


def release_parser(
    module: str, doc: str, name: str, candidates: Sequence[str]
) -> argparse.ArgumentParser:
    """The options of ``python -m <module>``, the recipe of the checkpoint ``name``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=COVID_CXR,
        help="covid-cxr folder (frontal/, lateral/, other/, manifest.csv; "
        "default: $CXR_DEV_DATA/covid-cxr, CXR_DEV_DATA defaulting to "
        "../shared/data beside the checkout)",
    )
    parser.add_argument(
        "--npz",
        type=Path,
        default=None,
        help="already decoded images (from --make-npz) instead of --data",
    )
    parser.add_argument(
        "--make-npz", type=Path, default=None, help="decode --data into this .npz and stop"
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="manifest.csv for image licences (default: --data/manifest.csv)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=SHIPPED,
        help="checkpoint, card and split.json (default: cxr_orient/shipped)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=FIGURES / name,
        help="figures and metrics (default: docs/figures/NAME)",
    )
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=20200601, help="training seed")
    parser.add_argument(
        "--split-seed",
        type=int,
        default=20200601,
        help="patient split seed (fixed: keeps the evaluation split)",
    )
    parser.add_argument(
        "--architecture",
        default=None,
        help="train this one architecture (--seed) and ship it, no choice",
    )
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="ARCH:SEED",
        help="train several candidates and ship the best on validation "
        f"(default: those it was chosen from, {' '.join(candidates)})",
    )
    parser.add_argument("--jobs", type=int, default=1, help="candidates trained at a time")
    parser.add_argument(
        "--teacher",
        action="append",
        default=[],
        type=Path,
        metavar="KERAS",
        help="distil from the mean of these checkpoints (repeatable)",
    )
    parser.add_argument(
        "--distill-weight",
        type=float,
        default=0.5,
        help="weight of the teachers' mean against the true label",
    )
    parser.add_argument(
        "--student",
        action="append",
        default=[],
        metavar="ARCH:SEED",
        help="with --candidate: after them, train this model distilled from "
        "all the candidates, and choose among all",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for the candidates (default: a temporary folder)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="threads building augmented batches",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="stop a training run after this many seconds",
    )
    parser.add_argument(
        "--min-epochs", type=int, default=140, help="epochs before early stopping may stop the run"
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="test-time augmentation recorded in the card",
    )
    parser.add_argument(
        "--finalize",
        action="store_true",
        help="only apply --tta to the checkpoint in --out, recalibrate on the "
        "validation patients, re-evaluate and rewrite card and report",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only draw the figures of an existing --report from its metrics.json",
    )
    parser.add_argument("--verbose", default="2", help="Keras fit verbosity: 0, 1, 2 or auto")
    return parser
