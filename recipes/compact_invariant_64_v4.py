"""compact-invariant-64-v4: v3 with a trained chest-or-not head and a PA/AP head.

    python -m recipes.compact_invariant_64_v4 cache      # decode + features -> .devdata/
    python -m recipes.compact_invariant_64_v4 fit        # choose, measure, write the checkpoint
    python -m recipes.compact_invariant_64_v4 occlusion  # docs/figures/.../projection-occlusion.png
    python -m recipes.compact_invariant_64_v4 thresholds # PA/AP coverage and accuracy by threshold

v3's network (trunk, view, orientation, unusual-image score) is kept weight for
weight, so the view and orientation answers are v3's. Two linear heads are trained on
its frozen, exactly invariant features (:data:`cxr_orient.architectures.SCOPE_FEATURE_DIMS`):

- **not a chest film**: chest films of ``covid-cxr/`` (training patients of the shipped
  split, stored and augmented) against the real radiographs of other body parts in
  ``nonchest/`` (outlier exposure). Spine films (frontal, with ribs and lungs) are 85 %
  of that set: they are weighed down so that together they count as much as one other
  body part, and never more than the chest films. The logit threshold is the largest
  logit of a validation-patient chest film (stored and augmented), plus a margin.
  Generalisation is estimated leaving one body part out (fit without it, threshold on
  validation chest films, measure on it).
- **PA or AP** (frontals only): training patients' films labelled PA against AP and
  AP Supine (the source's ``view``), class-balanced; regularisation and the abstention
  threshold are chosen on validation patients, measured once on the test patients.

The data: ``covid-cxr/`` and ``nonchest/`` in ``$CXR_DEV_DATA`` (unset: ``../shared/data``
beside the checkout). Nothing of them is committed (licences): the caches live in
``.devdata/`` (git-ignored), only figures reach the card. ``--out`` (default
cxr_orient/shipped) takes the checkpoint and its card.
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

from cxr_orient.architectures import build_model
from cxr_orient.modelstore import Classifier
from recipes.common.devdata import COVID_CXR, DEVDATA, FIGURES, NONCHEST, SHIPPED
from recipes.common.films import augmented_copies, features
from recipes.common.head_stats import (
    BODY_PARTS,
    CHEST_QUANTILE,
    chest_threshold,
    chest_training,
    confident,
    leave_one_part_out,
    part_of,
    projection_data,
    projection_figures,
    rate,
    v3_flags,
)
from training.projection import balanced_accuracy, fit_temperature_1d, logistic, sigmoid

logger = logging.getLogger("recipes.compact_invariant_64_v4")

BASE = SHIPPED / "compact-invariant-64-v3.keras"
NAME = "compact-invariant-64-v4"
SEED = 20261206
#: Augmented copies per film beside the stored one (the crops, zooms, contrast, noise
#: the view model trained with; turns and inversion change nothing by construction).
AUGMENTED = {"chest": 4, "nonchest": 2}


def _sources(manifest: Path) -> dict[str, dict[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


def _host(url: str) -> str:
    host = url.split("//", 1)[-1].split("/", 1)[0].lower()
    return host.removeprefix("www.") or "unknown"


def decode(args: argparse.Namespace) -> dict[str, Any]:
    """Every film as the worker sees it: grey uint8 256 x 256, and what is known of it."""
    from cxr_orient.imaging import load_image_file
    from recipes.common.nonchest import non_chest_images
    from training.data import load_labelled_folder

    chest_dir = COVID_CXR
    chest = load_labelled_folder(chest_dir)
    rows = _sources(chest_dir / "manifest.csv")
    split = json.loads((SHIPPED / "split.json").read_text(encoding="utf-8"))["files"]
    part = {f: k for k, files in split.items() for f in files}
    views = [rows.get(f, {}).get("view", "") for f in chest.files]
    hosts = [_host(rows.get(f, {}).get("url", "")) for f in chest.files]

    non_dir = NONCHEST
    non_rows = list(csv.DictReader((non_dir / "manifest.csv").open(newline="", encoding="utf-8")))
    non_images = np.stack([load_image_file(non_dir / r["file"], size=256) for r in non_rows])
    other = non_chest_images()
    return {
        "chest_images": chest.images,
        "chest_labels": chest.labels,
        "chest_files": np.asarray(chest.files),
        "chest_patients": np.asarray(chest.patients),
        "chest_views": np.asarray(views),
        "chest_hosts": np.asarray(hosts),
        "chest_split": np.asarray([part.get(f, "none") for f in chest.files]),
        "non_images": non_images,
        "non_files": np.asarray([r["file"] for r in non_rows]),
        "non_parts": np.asarray([r["body_part"] for r in non_rows]),
        "non_groups": np.asarray([r["group"] for r in non_rows]),
        "other_images": np.stack([other[k] for k in sorted(other)]),
        "other_names": np.asarray(sorted(other)),
    }


def v4_from_v3() -> keras.Model:
    """The v4 graph holding v3's weights (every layer v3 has, by name); the new heads
    untrained."""
    base = Classifier.from_checkpoint(BASE).model
    model = build_model("compact_invariant_64_heads3")
    copied = 0
    for layer in base.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
            copied += 1
    logger.info("copied %d layers from %s", copied, BASE.name)
    return model


def extractor(model: keras.Model) -> keras.Model:
    return keras.Model(
        model.input,
        {
            "scope": model.get_layer("scope_features").output,
            "unusual_v3": model.get_layer("unusual").output,
            "view": model.get_layer("view").output,
            "orientation": model.get_layer("orientation").output,
        },
    )


def cache(args: argparse.Namespace) -> None:
    images_path = DEVDATA / "v4-images.npz"
    if images_path.is_file():
        data = dict(np.load(images_path, allow_pickle=False))
    else:
        data = decode(args)
        DEVDATA.mkdir(exist_ok=True)
        np.savez_compressed(images_path, **data)
        logger.info("wrote %s", images_path)
    ex = extractor(v4_from_v3())
    out: dict[str, np.ndarray] = {}
    for name, key, copies in (
        ("chest", "chest_images", AUGMENTED["chest"]),
        ("non", "non_images", AUGMENTED["nonchest"]),
        ("other", "other_images", 0),
    ):
        imgs = data[key]
        stacked = augmented_copies(imgs, copies + 1, SEED + len(name)) if copies else imgs
        logger.info("features of %s: %d images", name, len(stacked))
        for k, v in features(ex, stacked).items():
            out[f"{name}/{k}"] = v.reshape(copies + 1, len(imgs), *v.shape[1:])
    np.savez_compressed(DEVDATA / "v4-features.npz", **out)  # type: ignore[arg-type]
    logger.info("wrote %s", DEVDATA / "v4-features.npz")


# --- heads on frozen features ---------------------------------------------------

#: L2 penalties tried for each head (chosen on held-out data: leave-one-body-part-out
#: detection for chest-or-not, validation patients' NLL for PA/AP).
PENALTIES = (1.0, 10.0, 100.0)
#: What the projection must reach on validation patients' answered frontals.
PROJECTION_TARGET = 0.97


def fit(args: argparse.Namespace) -> None:
    d = dict(np.load(DEVDATA / "v4-images.npz", allow_pickle=False))
    f = dict(np.load(DEVDATA / "v4-features.npz", allow_pickle=False))
    v3 = Classifier.from_checkpoint(BASE)
    v3_threshold = float(v3.card.unusual_threshold or 0.0)
    temperature = v3.card.temperature
    report: dict[str, Any] = {"penalties": {}}

    # 1. Chest or not: the penalty by leave-one-body-part-out detection.
    lobo = {pen: leave_one_part_out(f, d, pen, v3_threshold, temperature) for pen in PENALTIES}
    for pen, res in lobo.items():
        logger.info(
            "not-chest penalty %g: %s",
            pen,
            {k: (v["detected_stored"]["k"], v["detected_stored"]["n"]) for k, v in res.items()},
        )

    def lobo_score(res: dict[str, Any]) -> float:
        return float(np.mean([v["detected_all_copies"]["rate"] for v in res.values()]))

    penalty = max(PENALTIES, key=lambda pen: lobo_score(lobo[pen]))
    report["penalties"]["not_chest"] = penalty
    report["leave_one_body_part_out"] = lobo[penalty]
    parts = part_of(d["non_parts"])
    v3_flagged = v3_flags(f, "non", v3_threshold)
    v3_answered = ~v3_flagged & confident(f["non/view"], temperature)
    report["leave_one_body_part_out_v3"] = {
        part: {
            "detected_stored": rate(v3_flagged[0, parts == part]),
            "answered_confidently_stored": rate(v3_answered[0, parts == part]),
            "detected_all_copies": rate(v3_flagged[:, parts == part].reshape(-1)),
            "answered_confidently_all_copies": rate(v3_answered[:, parts == part].reshape(-1)),
        }
        for part in BODY_PARTS
    }
    coef_c, bias_c = logistic(*chest_training(f, d, set(BODY_PARTS)), penalty)
    logit_threshold = chest_threshold(f, d, coef_c, bias_c)
    logger.info("not-chest: penalty %g, logit threshold %.3f", penalty, logit_threshold)

    # 2. PA or AP: penalty and temperature on validation patients, abstention threshold
    # the lowest confidence whose answered validation frontals reach the target.
    xt, yt, _ = projection_data(f, d, "train")
    xv, yv, _ = projection_data(f, d, "val")
    w = np.where(yt == 1, 0.5 / yt.mean(), 0.5 / (1 - yt.mean()))
    fits = {}
    for pen in PENALTIES:
        coef, bias = logistic(
            xt.reshape(-1, xt.shape[-1]), np.tile(yt, len(xt)), np.tile(w, len(xt)), pen
        )
        z = (xv @ coef + bias).reshape(-1)
        fits[pen] = (
            coef,
            bias,
            float(
                np.mean(
                    np.logaddexp(0, -z) * np.tile(yv, len(xv))
                    + np.logaddexp(0, z) * (1 - np.tile(yv, len(xv)))
                )
            ),
        )
        logger.info(
            "PA/AP penalty %g: validation NLL %.4f, BA %.3f",
            pen,
            fits[pen][2],
            balanced_accuracy(np.tile(yv, len(xv)), sigmoid(z)),
        )
    pen_p = min(fits, key=lambda k: fits[k][2])
    coef_p, bias_p, _ = fits[pen_p]
    z_val = (xv @ coef_p + bias_p).reshape(-1)
    t_p = fit_temperature_1d(z_val, np.tile(yv, len(xv)))
    coef_p, bias_p = coef_p / t_p, bias_p / t_p
    p_val = sigmoid((xv @ coef_p + bias_p).reshape(-1))
    y_val = np.tile(yv, len(xv))
    projection_threshold = 0.99
    for c in np.arange(0.5, 0.99, 0.01):
        answered = np.maximum(p_val, 1 - p_val) >= c
        if balanced_accuracy(y_val[answered], p_val[answered]) >= PROJECTION_TARGET:
            projection_threshold = float(round(c, 2))
            break
    report["penalties"]["projection"] = pen_p
    report["projection_temperature"] = t_p
    report["projection_validation"] = projection_figures(y_val, p_val, projection_threshold)
    logger.info(
        "PA/AP: penalty %g, temperature %.3f, threshold %.2f, validation %s",
        pen_p,
        t_p,
        projection_threshold,
        report["projection_validation"],
    )

    # 3. The checkpoint.
    model = v4_from_v3()
    model.get_layer("not_chest_logit").set_weights(
        [coef_c[:, None].astype(np.float32), np.array([bias_c], np.float32)]
    )
    model.get_layer("scope_unusual").fit(v3_threshold, logit_threshold)
    model.get_layer("projection").set_weights(
        [coef_p[:, None].astype(np.float32), np.array([bias_p], np.float32)]
    )
    card = _card(v3, projection_threshold, logit_threshold, report)
    from cxr_orient.modelstore import save_checkpoint

    path = save_checkpoint(model, card, args.out)
    v4 = Classifier.from_checkpoint(path)
    report.update(measure(v3, v4, d))
    card.metrics = report
    save_checkpoint(v4.model, card, args.out)
    (DEVDATA / "v4-report.json").write_text(json.dumps(report, indent=2, default=float))
    logger.info("wrote %s and %s", path, DEVDATA / "v4-report.json")


def _card(
    v3: Classifier, projection_threshold: float, logit_threshold: float, report: dict[str, Any]
) -> Any:
    from cxr_orient.modelstore import ModelCard

    return ModelCard(
        name=NAME,
        architecture="compact_invariant_64_heads3",
        input_size=256,
        temperature=v3.card.temperature,
        review_threshold=v3.card.review_threshold,
        unusual_threshold=1.0,
        projection_threshold=projection_threshold,
        training={
            "recipe": "recipes/compact_invariant_64_v4.py",
            "base": v3.card.name,
            "base_sha256": v3.card.sha256,
            "seed": SEED,
            "not_chest_logit_threshold": logit_threshold,
            "not_chest_threshold_rule": f"{CHEST_QUANTILE} quantile of validation-"
            "patient chest films' logits (stored + 4 augmented copies)",
            "projection_threshold_rule": "lowest confidence whose answered "
            f"validation frontals reach balanced accuracy {PROJECTION_TARGET}",
            "data": {
                "chest": "covid-cxr (shipped split.json, by patient)",
                "not_chest": "nonchest/ (spine, dental, wrist, 6 limb films)",
            },
        },
    )


def measure(v3: Classifier, v4: Classifier, d: dict[str, np.ndarray]) -> dict[str, Any]:
    """Both checkpoints, end to end through :meth:`Classifier.predict`, the same way."""
    from pydicom.data import get_testdata_file

    from cxr_orient.imaging import load_image_file

    test = d["chest_split"] == "test"
    images = d["chest_images"][test]
    stacked = augmented_copies(images, 5, SEED + 99)
    copies = len(stacked) // len(images)
    labels, views, hosts = (
        np.tile(d[k][test], copies) for k in ("chest_labels", "chest_views", "chest_hosts")
    )
    rg1 = np.stack(
        [
            load_image_file(Path(str(get_testdata_file(n))), size=256)
            for n in ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm")
        ]
    )
    out: dict[str, Any] = {}
    for name, c in (("v3", v3), ("v4", v4)):
        preds = [p for i in range(0, len(stacked), 64) for p in c.predict(stacked[i : i + 64])]
        flagged = np.array([p.unusual for p in preds])
        p_lat = np.array([p.p_lateral for p in preds])
        res: dict[str, Any] = {
            "chest_flagged_unusual": rate(flagged),
            "chest_flagged_by_view": {v: rate(flagged[views == v]) for v in sorted(set(views))},
            "chest_flagged_by_source": {h: rate(flagged[hosts == h]) for h in sorted(set(hosts))},
            "lateral_recall": rate(p_lat[labels == 1] >= 0.5),
            "lateral_margin_min_p_lateral": float(p_lat[labels == 1].min()),
            "frontal_max_p_lateral": float(p_lat[labels == 0].max()),
            "rg1_flagged": [p.unusual for p in c.predict(rg1)],
        }
        other = [
            p
            for i in range(0, len(d["other_images"]), 64)
            for p in c.predict(d["other_images"][i : i + 64])
        ]
        names = d["other_names"]
        res["other_non_chest"] = {
            kind: {
                "flagged": rate(
                    np.array(
                        [p.unusual for p, n in zip(other, names, strict=True) if n.startswith(kind)]
                    )
                ),
                "answered_confidently": rate(
                    np.array(
                        [
                            not p.needs_review
                            for p, n in zip(other, names, strict=True)
                            if n.startswith(kind)
                        ]
                    )
                ),
            }
            for kind in ("dicom:", "document:", "pattern:")
        }
        res["rg3_tibia"] = [
            (str(n), p.unusual, not p.needs_review)
            for p, n in zip(other, names, strict=True)
            if "RG3" in str(n)
        ]
        if name == "v4":
            frontal = (labels == 0) & np.isin(views, ["PA", "AP", "AP Supine"])
            p_ap = np.array([p.p_ap for p in preds])[frontal]
            res["projection_test"] = projection_figures(
                (views[frontal] != "PA").astype(float),
                p_ap,
                float(v4.card.projection_threshold or 0.5),
            )
            stored = frontal[: len(images)]
            res["projection_test_stored"] = projection_figures(
                (views[: len(images)][stored] != "PA").astype(float),
                p_ap[: int(stored.sum())],
                float(v4.card.projection_threshold or 0.5),
            )
        out[name] = res
        logger.info("%s: %s", name, json.dumps(res, default=float)[:2000])
    return {"measured": out}


def occlusion(
    args: argparse.Namespace, *, patch: int = 32, stride: int = 16, films: int = 6
) -> None:
    """Where the PA/AP head looks: the change of its logit when a ``patch`` square is
    greyed (128, the centre of the range: 0 after the model's centring), for the first
    ``films`` test-patient PA, AP and AP Supine films under CC BY (attribution only:
    listed in ``projection-occlusion.json`` beside the figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = dict(np.load(DEVDATA / "v4-images.npz", allow_pickle=False))
    v4 = Classifier.from_checkpoint(args.out / f"{NAME}.keras")
    rows = _sources(COVID_CXR / "manifest.csv")
    licence = np.array([rows.get(str(f), {}).get("license", "") for f in d["chest_files"]])
    open_licence = np.isin(licence, ["CC BY", "CC BY 3.0", "CC BY 4.0"])
    picks: list[int] = []
    for view in ("PA", "AP", "AP Supine"):
        index = np.flatnonzero(
            (d["chest_split"] == "test") & (d["chest_views"] == view) & open_licence
        )
        picks += [int(i) for i in index[: films // 3]]
    positions = list(range(0, 256 - patch + 1, stride))
    fig, axes = plt.subplots(2, len(picks), figsize=(2.2 * len(picks), 4.6))
    for column, i in enumerate(picks):
        image = d["chest_images"][i]
        batch = [image]
        for y in positions:
            for x in positions:
                covered = image.copy()
                covered[y : y + patch, x : x + patch] = 128
                batch.append(covered)
        p = np.concatenate(
            [
                v4.predict_heads(np.stack(batch[j : j + 64])).projection
                for j in range(0, len(batch), 64)
            ]
        )
        z = np.log(np.clip(p, 1e-7, 1)) - np.log(np.clip(1 - p, 1e-7, 1))
        heat = np.zeros((256, 256))
        count = np.zeros((256, 256))
        for k, (y, x) in enumerate((y, x) for y in positions for x in positions):
            heat[y : y + patch, x : x + patch] += abs(z[k + 1] - z[0])
            count[y : y + patch, x : x + patch] += 1
        axes[0, column].imshow(image, cmap="gray")
        axes[0, column].set_title(f"{d['chest_views'][i]}: p_ap {p[0]:.2f}", fontsize=8)
        axes[1, column].imshow(image, cmap="gray")
        axes[1, column].imshow(heat / np.maximum(count, 1), cmap="inferno", alpha=0.6)
        for ax in axes[:, column]:
            ax.axis("off")
    fig.suptitle("PA/AP head: |change of logit| when a 32 px square is greyed", fontsize=9)
    out = FIGURES / NAME / "projection-occlusion.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    attribution = [
        {
            "file": str(d["chest_files"][i]),
            "licence": str(licence[i]),
            "source": rows[str(d["chest_files"][i])]["url"],
            "collection": "ieee8023/covid-chestxray-dataset (Cohen et al. 2020)",
        }
        for i in picks
    ]
    out.with_suffix(".json").write_text(json.dumps(attribution, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s", out)


#: PA/AP thresholds tabulated for CXR_PROJECTION_THRESHOLD (a table, not a choice).
THRESHOLDS = (0.81, 0.85, 0.9, 0.93, 0.95, 0.97)


def thresholds(args: argparse.Namespace) -> None:
    """The shipped v4's PA/AP answers by threshold, on validation and on test patients'
    labelled frontals (stored + 4 augmented copies, as :func:`measure`): what a
    hospital trades by raising
    CXR_PROJECTION_THRESHOLD. Decodes the chest films only (no cache needed)."""
    from training.data import load_labelled_folder

    chest = load_labelled_folder(COVID_CXR)
    rows = _sources(COVID_CXR / "manifest.csv")
    split = json.loads((SHIPPED / "split.json").read_text(encoding="utf-8"))["files"]
    part = {f: k for k, files in split.items() for f in files}
    views = np.asarray([rows.get(f, {}).get("view", "") for f in chest.files])
    parts = np.asarray([part.get(f, "none") for f in chest.files])
    v4 = Classifier.from_checkpoint(args.out / f"{NAME}.keras")
    table: dict[str, Any] = {
        "model": NAME,
        "sha256": v4.card.sha256,
        "card_threshold": v4.card.projection_threshold,
    }
    for name in ("val", "test"):
        keep = (parts == name) & np.isin(views, ["PA", "AP", "AP Supine"])
        stacked = augmented_copies(chest.images[keep], 5, SEED + 99)
        y = np.tile((views[keep] != "PA").astype(float), len(stacked) // int(keep.sum()))
        # The head's p_ap (what Prediction.p_ap is for a frontal), every film a frontal.
        p_ap = np.concatenate(
            [v4.predict_heads(stacked[i : i + 64]).projection for i in range(0, len(stacked), 64)]
        )
        table[name] = {f"{t:.2f}": projection_figures(y, p_ap, t) for t in THRESHOLDS}
        logger.info(
            "%s: %s",
            name,
            {
                t: (
                    v["answered"]["k"],
                    v["answered"]["n"],
                    round(v["balanced_accuracy_answered"], 3),
                )
                for t, v in table[name].items()
            },
        )
    out = FIGURES / NAME / "projection-thresholds.json"
    out.write_text(json.dumps(table, indent=2, default=float) + "\n", encoding="utf-8")
    logger.info("wrote %s", out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.compact_invariant_64_v4",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("step", choices=("cache", "fit", "occlusion", "thresholds"))
    parser.add_argument(
        "--out",
        type=Path,
        default=SHIPPED,
        help="the checkpoint and its card (default: cxr_orient/shipped)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    steps = {"cache": cache, "fit": fit, "occlusion": occlusion, "thresholds": thresholds}
    steps[args.step](args)


if __name__ == "__main__":
    main()
