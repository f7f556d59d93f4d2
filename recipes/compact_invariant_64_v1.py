"""compact-invariant-64-v1: the view network (frontal or lateral), trained on covid-cxr.

    python -m recipes.compact_invariant_64_v1 --make-npz .devdata/covid-cxr-256.npz
    python -m recipes.compact_invariant_64_v1 --npz .devdata/covid-cxr-256.npz \\
        --manifest .devdata/manifest.csv --out OUT --report OUT/report --work OUT/candidates \\
        --jobs 6 --workers 2 --time-budget 250 --verbose 2

The second line is what made the checkpoint in cxr_orient/shipped/ (on an H100, through
``scripts/h100.sh train``; its card records the command under the recipe's former name,
``python -m training.ship``): six candidates, ``compact_invariant_64`` and
``compact_invariant_slim`` with seeds 20200601, 7 and 11, each in its own process; the
one shipped, ``compact_invariant_64`` seed 20200601, is the best on the validation
patients over the 16 dihedral x inversion views. ``--architecture ARCH --seed N`` trains
and ships one model without a choice. The model card (docs/model-card.md) has the
figures; v2, v3 and v4 keep this network weight for weight.

The data: ``--data`` (default ``$CXR_DEV_DATA/covid-cxr``, ``CXR_DEV_DATA`` defaulting to
``../shared/data`` beside the checkout) or a decoded ``--npz``; the split is
``--split-seed`` 20200601 (cxr_orient/shipped/split.json).
"""

from __future__ import annotations

from recipes.common import release

RELEASE = release.Release(
    name="compact-invariant-64-v1",
    module="recipes.compact_invariant_64_v1",
    candidates=(
        "compact_invariant_64:20200601",
        "compact_invariant_64:7",
        "compact_invariant_64:11",
        "compact_invariant_slim:20200601",
        "compact_invariant_slim:7",
        "compact_invariant_slim:11",
    ),
    doc=f"{__doc__}\nHow a release is trained and chosen (recipes/common/release.py):\n\n"
    f"{release.__doc__}",
)


def main(argv: list[str] | None = None) -> None:
    release.main(RELEASE, argv)


if __name__ == "__main__":
    main()
