"""What the nightly chest-or-not refit (:mod:`training.scope_refit`) does for a site whose
body part the base head never saw.

    python -m recipes.scope_refit_site        # -> docs/figures/scope-refit-site/report.json

The shipped v4 head was fitted on every development body part and flags all of them, so
the experiment needs a part it has not seen: for each of ``wrist`` and ``dental``, a base
head is fitted the recipe's way (``recipes/compact_invariant_64_v4.py``, penalty 1,
threshold the 0.995 quantile of validation chest films) *without* that part, in v4's
graph: the serving model of a site whose reviewers then label that part ``not_chest``.

The part's films are split (fixed seed) into a pool reviewers label (60 %) and held-out
films (40 %); the first ``n`` of the pool are split 80/20 into training and validation
patients, as the retrain splits them; chest films are the shipped split's (training,
validation; its test patients held out). The anchored refit
(:func:`training.scope_refit.fit_scope_head`) learns from them; both heads are measured
on held-out films as the service flags them (the head's logit over its threshold, or the
unusual-image score over its own): held-out films of the part detected, held-out chest
films flagged (stored and 2 augmented copies), the other body parts still detected (the
base's knowledge kept). A plain fit (lambda 1e-6: almost no anchor) is measured beside it.

Data: ``covid-cxr/`` and ``nonchest/`` of ``$CXR_DEV_DATA`` (``../shared/data``);
features are cached in ``.devdata/scope-refit-features.npz``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np

from recipes.common.devdata import COVID_CXR, DEVDATA, FIGURES, NONCHEST, SHIPPED
from recipes.common.films import augmented_copies, features
from recipes.common.head_stats import BODY_PARTS, chest_threshold, chest_training, part_of, rate
from training.scope_refit import anchored_logistic, choose_logit_threshold, fit_scope_head

logger = logging.getLogger("recipes.scope_refit_site")

V4 = SHIPPED / "compact-invariant-64-v4.keras"
SEED = 20261207
COPIES = 3  # stored + 2 augmented
CACHE = DEVDATA / "scope-refit-features.npz"
OUT = FIGURES / "scope-refit-site"
LABELLED_SHARE = 0.6  # of the part's films: labelled by "reviewers"; the rest held out
#: Films labelled by the site's reviewers, the first n of the pool (all of it last).
LABELLED_COUNTS = (10, 20, 40, 10_000)


def _data() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    if CACHE.is_file():
        cached = dict(np.load(CACHE, allow_pickle=False))
        return (
            {k[2:]: v for k, v in cached.items() if k.startswith("f:")},
            {k[2:]: v for k, v in cached.items() if k.startswith("d:")},
        )
    from cxr_orient.imaging import load_image_file
    from cxr_orient.modelstore import load_checkpoint
    from training.data import load_labelled_folder

    chest = load_labelled_folder(COVID_CXR)
    split = json.loads((SHIPPED / "split.json").read_text(encoding="utf-8"))["files"]
    side = {f: k for k, files in split.items() for f in files}
    with (NONCHEST / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    non = np.stack([load_image_file(NONCHEST / r["file"], size=256) for r in rows])
    model = load_checkpoint(V4)
    ex = keras.Model(
        model.input,
        {
            "scope": model.get_layer("scope_features").output,
            "unusual": model.get_layer("unusual").output,
        },
    )
    f: dict[str, np.ndarray] = {}
    for name, imgs in (("chest", chest.images), ("non", non)):
        logger.info("features of %d %s films x %d", len(imgs), name, COPIES)
        for k, v in features(ex, augmented_copies(imgs, COPIES, SEED + len(name))).items():
            f[f"{name}/{k}"] = v.reshape(COPIES, len(imgs), *v.shape[1:])
    d = {
        "chest_split": np.asarray([side.get(fn, "none") for fn in chest.files]),
        "non_parts": np.asarray([r["body_part"] for r in rows]),
    }
    DEVDATA.mkdir(exist_ok=True)
    arrays = {**{f"f:{k}": v for k, v in f.items()}, **{f"d:{k}": v for k, v in d.items()}}
    np.savez_compressed(CACHE, **arrays)  # type: ignore[arg-type]
    return f, d


def _site(
    f: dict[str, np.ndarray], d: dict[str, np.ndarray], held: str, score_threshold: float
) -> dict[str, Any]:
    parts = part_of(d["non_parts"])
    coef0, bias0 = _base_head(f, d, held)
    t0 = chest_threshold(f, d, coef0, bias0)
    rng = np.random.default_rng(SEED)
    films = rng.permutation(np.flatnonzero(parts == held))
    n_labelled = round(LABELLED_SHARE * len(films))
    labelled, held_out = films[:n_labelled], films[n_labelled:]
    chest = f["chest/scope"]
    score_chest = f["chest/unusual"][..., 0] > score_threshold
    score_non = f["non/unusual"][..., 0] > score_threshold
    tr, va, te = (d["chest_split"] == s for s in ("train", "val", "test"))

    def measure(coef: np.ndarray, bias: float, t: float) -> dict[str, Any]:
        flagged_non = (f["non/scope"] @ coef + bias > t) | score_non
        flagged_chest = (chest[:, te] @ coef + bias > t) | score_chest[:, te]
        return {
            "held_out_detected_stored": rate(flagged_non[0, held_out]),
            "held_out_detected_all_copies": rate(flagged_non[:, held_out]),
            "test_chest_flagged_stored": rate(flagged_chest[0]),
            "test_chest_flagged_all_copies": rate(flagged_chest),
            "other_parts_detected_stored": {
                p: rate(flagged_non[0, parts == p]) for p in BODY_PARTS if p != held
            },
        }

    out: dict[str, Any] = {
        "part": held,
        "films": {"labelled_pool": len(labelled), "held_out": len(held_out)},
        "base": {"logit_threshold": t0, **measure(coef0, bias0, t0)},
        "refits": {},
    }
    for n in LABELLED_COUNTS:
        # The first n labelled films, split as the retrain splits patients (80/20).
        pool = labelled[:n]
        n_val = max(2, round(0.2 * len(pool)))
        val_site, use = pool[:n_val], pool[n_val:]
        train_x = np.concatenate([chest[:, tr], f["non/scope"][:, use]], axis=1)
        train_y = np.concatenate([np.zeros(int(tr.sum())), np.ones(len(use))])
        val_x = np.concatenate([chest[:, va], f["non/scope"][:, val_site]], axis=1)
        val_y = np.concatenate([np.zeros(int(va.sum())), np.ones(len(val_site))])
        fit = fit_scope_head(train_x, train_y, val_x, val_y, coef0, bias0)
        plain, plain_bias = anchored_logistic(
            train_x.reshape(-1, train_x.shape[-1]), np.tile(train_y, COPIES), coef0, bias0, 1e-6
        )
        plain_t = choose_logit_threshold(val_x[:, val_y == 0] @ plain + plain_bias)
        key = f"{len(use) + len(val_site)} labelled ({len(use)} train, {len(val_site)} val)"
        out["refits"][key] = {
            "lambda": None if np.isinf(fit.lam) else fit.lam,
            "logit_threshold": fit.logit_threshold,
            "anchored": measure(fit.coef, fit.bias, fit.logit_threshold),
            "plain_lambda_1e-6": measure(plain, plain_bias, plain_t),
        }
        logger.info("%s %s: %s", held, key, json.dumps(out["refits"][key], default=float)[:600])
        if len(pool) >= len(labelled):
            break
    return out


def _base_head(
    f: dict[str, np.ndarray], d: dict[str, np.ndarray], held: str
) -> tuple[np.ndarray, float]:
    from training.projection import logistic

    return logistic(*chest_training(f, d, set(BODY_PARTS) - {held}), 1.0)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m recipes.scope_refit_site",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from cxr_orient.modelstore import load_checkpoint

    f, d = _data()
    score_threshold = float(load_checkpoint(V4).get_layer("scope_unusual").get_weights()[0][0])
    report = {
        "seed": SEED,
        "copies": COPIES,
        "sites": [_site(f, d, p, score_threshold) for p in ("wrist", "dental")],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = Path(OUT / "report.json")
    path.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
