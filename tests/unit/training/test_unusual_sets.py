"""The non-chest image sets of the unusual-image score: the development set never
repeats a measurement image, and the figures' intervals are Wilson's."""

from __future__ import annotations

import numpy as np
import pytest


def test_synthetic_development_images_are_model_input() -> None:
    from recipes.common.nonchest_dev import synthetic_images

    images = synthetic_images(count=2)
    assert len(images) == 20
    for name, image in images.items():
        assert name.startswith("synthetic:")
        assert image.shape == (256, 256) and image.dtype == np.uint8
        assert image.max() > image.min(), name


def test_development_set_leaves_out_measurement_images() -> None:
    """pynetdicom ships pydicom's CT slice again: it must not be in the development set,
    in any pose, while a picture no measurement image resembles is."""
    pytest.importorskip("pynetdicom")
    from cxr_orient.layers import orbit_copies
    from recipes.common.nonchest import non_chest_images
    from recipes.common.nonchest_dev import package_images

    measurement = non_chest_images()
    ct = next(v for k, v in measurement.items() if k.endswith(":CT_small"))
    turned = {"turned_ct": np.ascontiguousarray(orbit_copies(ct)[5])}
    kept = package_images(exclude=measurement)
    assert not any(name.endswith("CTImageStorage") for name in kept)
    assert "dicom:RTIMAGE:RTImageStorage" in kept
    assert not set(kept) & set(measurement)
    # The check sees a turned copy too.
    assert not any(name.endswith("CTImageStorage") for name in package_images(exclude=turned))


def test_wilson_interval() -> None:
    from recipes.common.proportions import wilson_interval

    low, high = wilson_interval(0, 97)
    assert low == 0.0 and abs(high - 0.0381) < 1e-3
    low, high = wilson_interval(56, 58)
    assert abs(low - 0.8827) < 1e-3 and abs(high - 0.9905) < 1e-3
