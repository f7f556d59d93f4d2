"""The orientation and unusual-image heads: exact equivariance, the answer rule, the
shipped model on a real film in all 8 poses, and the score's fit and round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_orient.layers import ORBIT_SIZE, STORED_AS, orbit_copies


def _store_as(image: np.ndarray, copy: int) -> np.ndarray:
    k, mirrored = STORED_AS[copy]
    return np.ascontiguousarray(np.rot90(image[:, ::-1] if mirrored else image, k))


def test_stored_as_names_the_copy_that_undoes_the_storage() -> None:
    upright = np.arange(49).reshape(7, 7)
    assert len(set(STORED_AS)) == ORBIT_SIZE
    for copy in range(ORBIT_SIZE):
        assert np.array_equal(orbit_copies(_store_as(upright, copy))[copy], upright)


def test_orbit_copies_match_the_layer() -> None:
    from cxr_orient.layers import DihedralOrbit

    image = np.random.default_rng(0).random((1, 6, 6, 1)).astype(np.float32)
    layer = np.asarray(DihedralOrbit()(image))
    for j, copy in enumerate(orbit_copies(image[0])):
        np.testing.assert_array_equal(layer[j], copy)


def _permutation(copy: int) -> list[int]:
    """pi with orbit_copies(stored)[j] == orbit_copies(upright)[pi[j]]."""
    upright = np.arange(64).reshape(8, 8)
    base = orbit_copies(upright)
    moved = orbit_copies(_store_as(upright, copy))
    return [next(i for i, b in enumerate(base) if np.array_equal(m, b)) for m in moved]


@pytest.fixture(scope="module")
def untrained():
    import keras

    from cxr_orient.architectures import build_model
    from cxr_orient.modelstore import Classifier, ModelCard

    keras.utils.set_random_seed(3)
    model = build_model("compact_invariant_64_heads")
    card = ModelCard(
        name="untrained",
        architecture="compact_invariant_64_heads",
        input_size=256,
        unusual_threshold=5.0,
    )
    return Classifier(model, card)


def test_heads_are_exactly_equivariant_on_an_untrained_network(untrained) -> None:
    """Turning or mirroring the input permutes the orientation scores exactly and leaves
    the view and the unusual-image score as they were: by construction, not by luck."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    image[:80, :40] = 255  # something asymmetric for the untrained scorers to see
    poses = np.stack([_store_as(image, c) for c in range(ORBIT_SIZE)])
    heads = untrained.predict_heads(np.repeat(poses[..., None], 3, axis=-1))
    assert heads.orientation is not None and heads.unusual is not None
    reference = heads.orientation[0]
    assert np.ptp(reference) > 1e-3, "the scorers must tell the copies apart"
    for copy in range(ORBIT_SIZE):
        pi = _permutation(copy)
        np.testing.assert_allclose(heads.orientation[copy], reference[pi], atol=1e-6)
        np.testing.assert_allclose(heads.view[copy], heads.view[0], atol=1e-6)
        np.testing.assert_allclose(heads.unusual[copy], heads.unusual[0], rtol=1e-5)
    inverted = untrained.predict_heads(np.repeat((255 - poses)[..., None], 3, axis=-1))
    np.testing.assert_allclose(inverted.orientation, heads.orientation, atol=1e-6)


def test_orientation_answer_marginalises_the_mirror() -> None:
    from cxr_orient.modelstore import orientation_answer

    p = np.zeros(ORBIT_SIZE)
    # Rotation 90 split over its two copies outweighs a single stronger copy at 0.
    p[STORED_AS.index((1, False))] = 0.3
    p[STORED_AS.index((1, True))] = 0.35
    p[STORED_AS.index((0, False))] = 0.35
    assert orientation_answer(p, "frontal") == (90, True)
    assert orientation_answer(p, "lateral") == (90, None)


@pytest.fixture(scope="module")
def shipped(shipped_models):
    return shipped_models()


@pytest.fixture(scope="module")
def rg1() -> np.ndarray:
    from pydicom.data import get_testdata_file

    from cxr_orient.imaging import load_dicom_image

    return load_dicom_image(Path(str(get_testdata_file("RG1_UNCR.dcm"))))


def test_shipped_model_says_how_a_real_film_is_stored(shipped, rg1: np.ndarray) -> None:
    """RG1 (a real CR chest PA) in all 8 poses, and inverted: the stored pose each time,
    the same view, not unusual."""
    assert shipped.has_heads and shipped.card.unusual_threshold is not None
    poses = np.stack([_store_as(rg1, c) for c in range(ORBIT_SIZE)])
    for batch in (poses, 255 - poses):
        answers = shipped.predict(np.repeat(batch[..., None], 3, axis=-1))
        for copy, answer in enumerate(answers):
            k, mirrored = STORED_AS[copy]
            assert answer.label == "frontal"
            assert (answer.rotation, answer.mirrored) == (90 * k, mirrored), copy
            assert not answer.unusual and "unusual_image" not in answer.review_reasons


def test_shipped_model_flags_a_ct_slice_as_unusual(shipped) -> None:
    from pydicom.data import get_testdata_file

    from cxr_orient.imaging import load_dicom_image

    ct = load_dicom_image(Path(str(get_testdata_file("CT_small.dcm"))))
    (answer,) = shipped.predict(np.repeat(ct[None, ..., None], 3, axis=-1))
    assert answer.unusual and answer.needs_review
    assert "unusual_image" in answer.review_reasons
    assert answer.unusual_score is not None
    assert answer.unusual_score > shipped.card.unusual_threshold


def test_mahalanobis_score_fits_and_survives_a_keras_round_trip(tmp_path: Path) -> None:
    import keras

    from cxr_orient.layers import MahalanobisScore

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (400, 6)).astype(np.float32)
    y = (np.arange(400) % 2).astype(int)
    x[y == 1] += 3.0
    inputs = keras.Input((6,))
    layer = MahalanobisScore(2, 6, name="unusual")
    model = keras.Model(inputs, layer(inputs))
    layer.fit(x, y)
    typical = np.asarray(model.predict_on_batch(x))[:, 0]
    far = np.asarray(model.predict_on_batch(np.full((1, 6), 40.0, np.float32)))[0, 0]
    assert 0.7 < float(np.median(typical)) < 1.3
    assert far > 10 * float(np.median(typical))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded.predict_on_batch(x))[:, 0], typical, rtol=1e-6)


def test_orientation_entropy_spans_certain_to_undecided() -> None:
    from cxr_orient.layers import orientation_entropy

    p = np.zeros((2, ORBIT_SIZE), np.float32)
    p[0, 3] = 1.0
    p[1] = 1.0 / ORBIT_SIZE
    h = np.asarray(orientation_entropy(p))[:, 0]
    assert h[0] < 1e-6
    assert abs(h[1] - np.log(ORBIT_SIZE)) < 1e-5


def test_unusual_score_is_the_larger_scaled_part_and_round_trips(tmp_path: Path) -> None:
    """Scales fitted as validation quantiles; the output is max(d / s_d, H / s_h), the
    same after a ``.keras`` round trip with ``safe_mode``."""
    import keras

    from cxr_orient.layers import UnusualScore

    rng = np.random.default_rng(2)
    distances = rng.uniform(0.5, 1.5, 400).astype(np.float32)
    confident = np.full((400, ORBIT_SIZE), 0.01, np.float32)
    confident[:, 0] = 1.0 - 0.01 * (ORBIT_SIZE - 1)
    d_in, p_in = keras.Input((1,)), keras.Input((ORBIT_SIZE,))
    layer = UnusualScore(name="unusual")
    model = keras.Model([d_in, p_in], layer([d_in, p_in]))
    layer.fit(distances, confident, quantile=0.99)
    s_d, s_h = np.asarray(layer.scales)
    assert abs(s_d - np.quantile(distances, 0.99)) < 1e-5
    undecided = np.full((1, ORBIT_SIZE), 1.0 / ORBIT_SIZE, np.float32)
    near = np.array([[1.0]], np.float32)
    out = float(np.asarray(model.predict_on_batch([near, undecided]))[0, 0])
    assert abs(out - np.log(ORBIT_SIZE) / s_h) < 1e-4 and out > 1.0 / s_d
    far = float(
        np.asarray(model.predict_on_batch([np.array([[50.0]], np.float32), confident[:1]]))[0, 0]
    )
    assert abs(far - 50.0 / s_d) < 1e-3
    path = tmp_path / "score.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    again = float(np.asarray(loaded.predict_on_batch([near, undecided]))[0, 0])
    assert abs(again - out) < 1e-6


def test_heads2_score_is_invariant_on_an_untrained_network() -> None:
    """The orientation-entropy score of ``compact_invariant_64_heads2`` is unchanged by the
    8 poses and by inversion (the entropy of a permuted softmax is the same)."""
    import keras

    from cxr_orient.architectures import build_model

    keras.utils.set_random_seed(4)
    model = build_model("compact_invariant_64_heads2")
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    image[:90, :30] = 0
    poses = np.stack([_store_as(image, c) for c in range(ORBIT_SIZE)])
    for batch in (poses, 255 - poses):
        x = np.repeat(batch[..., None], 3, axis=-1).astype(np.float32)
        scores = np.asarray(model.predict_on_batch(x)["unusual"])[:, 0]
        np.testing.assert_allclose(scores, scores[0], rtol=1e-5)
