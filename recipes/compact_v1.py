"""compact-v1: the first shipped view network (``compact``, not invariant by
construction), kept in cxr_orient/shipped/ for databases that serve it and rollback.

    python -m recipes.compact_v1 --npz .devdata/covid-cxr-256.npz \\
        --manifest .devdata/manifest.csv --out OUT --report OUT/report --work OUT/candidates \\
        --jobs 3 --workers 4 --time-budget 220

That line is what made it (its card records it under the recipe's former name,
``python -m training.ship``): three candidates, ``compact`` with seeds 20200601 and 7 and
``compact_wide`` with seed 20200601, each in its own process; the one shipped,
``compact`` seed 7, is the best on the validation patients over the 16 dihedral x
inversion views. The training code has moved on since (compact-invariant-64-v1 is its
successor), so a run today trains by today's rules; the card and
docs/figures/compact-v1/ keep the figures of the run that made it.

The data: ``--data`` (default ``$CXR_DEV_DATA/covid-cxr``, ``CXR_DEV_DATA`` defaulting to
``../shared/data`` beside the checkout) or a decoded ``--npz`` (``python -m
recipes.compact_invariant_64_v1 --make-npz``); the split is ``--split-seed`` 20200601.
"""

from __future__ import annotations

from recipes.common import release

RELEASE = release.Release(
    name="compact-v1",
    module="recipes.compact_v1",
    candidates=("compact:20200601", "compact:7", "compact_wide:20200601"),
    doc=f"{__doc__}\nHow a release is trained and chosen (recipes/common/release.py):\n\n"
    f"{release.__doc__}",
)


def main(argv: list[str] | None = None) -> None:
    release.main(RELEASE, argv)


if __name__ == "__main__":
    main()
