"""How each shipped checkpoint was made: one recipe per model or study, run from a
checkout as ``python -m recipes.<name>`` (``--help`` tells the exact command that made it).

- :mod:`recipes.compact_v1`: ``compact-v1``, the first view network (kept for rollback);
- :mod:`recipes.compact_invariant_64_v1`: ``compact-invariant-64-v1``, the invariant view
  network every later version keeps weight for weight (also ``--make-npz``: covid-cxr
  decoded into ``.devdata/covid-cxr-256.npz``, which the others read);
- :mod:`recipes.compact_invariant_64_v2`: ``compact-invariant-64-v2``, the orientation
  head and the first unusual-image score;
- :mod:`recipes.unusual_score`: the study that chose the unusual-image score's design on
  a development set of non-chest images;
- :mod:`recipes.compact_invariant_64_v3`: ``compact-invariant-64-v3``, that design (the
  default before v4);
- :mod:`recipes.compact_invariant_64_v4`: ``compact-invariant-64-v4``, the chest-or-not
  and PA/AP heads (the shipped default);
- :mod:`recipes.lateral_encodings`: a study of the shipped default, its lateral recall
  and margin on test patients' films under every turn and lossy DICOM encoding;
- :mod:`recipes.gpu_heads_probe`: a study on the lent GPU, whether networks of their own
  at 256 px tell PA from AP and chest from not-chest better than v4's heads;
- :mod:`recipes.scope_refit_site`: a study of the nightly chest-or-not refit
  (:mod:`training.scope_refit`) for a site whose body part the base head never saw.

:mod:`recipes.common` holds what several share. The data come from ``CXR_DEV_DATA``
(default ``../shared/data`` beside the checkout; :mod:`recipes.common.devdata`), never
from the repository. Not part of the wheel, and nothing of the product imports it
(tests/unit/test_architecture.py): a recipe may use the library and ``training``.
"""
