"""Where the recipes find the development data and put what they make.

- ``CXR_DEV_DATA``: the folder holding ``covid-cxr/`` (frontal/, lateral/, manifest.csv)
  and ``nonchest/`` (manifest.csv and the films); unset, ``../shared/data`` beside the
  checkout, where the development machines keep it. Nothing of it is in the repository
  (licences). ``bench/dicom_factory.py`` reads the same variable.
- ``.devdata/`` in the checkout (git-ignored): the decoded caches the recipes write and
  read (``covid-cxr-256.npz`` from ``python -m recipes.compact_invariant_64_v1
  --make-npz``, the features of the unusual-image study, v4's caches).
- ``cxr_orient/shipped/`` and ``docs/figures/``: where a recipe writes the checkpoint,
  its card and its report by default (each recipe takes ``--out`` / ``--report``).

Every path is a default of an argument; nothing here is read at import but the variable.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CHECKOUT",
    "COVID_CXR",
    "DEVDATA",
    "DEV_DATA",
    "FIGURES",
    "NONCHEST",
    "NPZ",
    "SHIPPED",
    "SPLIT",
]

#: The checkout the recipes run from (``python -m recipes.<name>`` at its root).
CHECKOUT = Path(__file__).resolve().parents[2]
DEV_DATA = Path(os.environ.get("CXR_DEV_DATA") or CHECKOUT.parent / "shared" / "data")
#: The covid-cxr collection (ieee8023/covid-chestxray-dataset, June 2020 snapshot).
COVID_CXR = DEV_DATA / "covid-cxr"
#: Real radiographs of other body parts (v4's chest-or-not head).
NONCHEST = DEV_DATA / "nonchest"
DEVDATA = CHECKOUT / ".devdata"
#: covid-cxr decoded as the worker decodes (256 px grey), for machines without pydicom.
NPZ = DEVDATA / "covid-cxr-256.npz"
SHIPPED = CHECKOUT / "cxr_orient" / "shipped"
#: The patient split every shipped model since compact-invariant-64-v1 was made on.
SPLIT = SHIPPED / "split.json"
FIGURES = CHECKOUT / "docs" / "figures"
