import numpy as np
import pytest

from cxr_orient.architectures import build_model
from cxr_orient.errors import ModelIntegrityError
from cxr_orient.modelstore import (
    Classifier,
    ModelCard,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    load_checkpoint,
    padded_batch_size,
    read_card,
    save_checkpoint,
    tta_views,
)
from cxr_orient.settings import get_settings


def _nll(probs, y):
    return -np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1)))


def test_save_read_load_round_trip(tmp_path):
    model = build_model("compact", input_size=64)
    card = ModelCard(name="m", architecture="compact", input_size=64, temperature=1.5)
    path = save_checkpoint(model, card, tmp_path)
    assert path.name == "m.keras" and (tmp_path / "m.json").is_file()
    again = read_card(path)
    assert again == card and again.labels == ("frontal", "lateral")
    clf = Classifier.from_checkpoint(path)
    grey = np.random.default_rng(0).integers(0, 256, (4, 64, 64), dtype=np.uint8)
    probs = clf.predict_proba(grey)
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    preds = clf.predict(grey)
    assert [p.label in ("frontal", "lateral") for p in preds] == [True] * 4


def test_sha_mismatch_raises(tmp_path):
    card = ModelCard(name="m", architecture="compact", input_size=64)
    path = save_checkpoint(build_model("compact", input_size=64), card, tmp_path)
    with pytest.raises(ModelIntegrityError):
        load_checkpoint(path, expected_sha256="0" * 64)


def test_temperature_fitting_reduces_nll_on_overconfident_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    true_logit = rng.normal(0, 1.5, 2000) + np.where(y == 1, 1.0, -1.0)
    y = (rng.random(2000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    over = 1 / (1 + np.exp(-3 * true_logit))  # logits three times too large
    probs = np.stack([1 - over, over], axis=1)
    t = fit_temperature(probs, y)
    assert 2.5 < t < 3.5
    assert _nll(apply_temperature(probs, t), y) < _nll(probs, y)


def test_ece_hand_computed():
    p = np.array([0.9, 0.9, 0.2, 0.6])
    y = np.array([1, 0, 0, 1])
    # confidences 0.9, 0.9, 0.8, 0.6; bins [0.85,0.9] -> acc 0.5 conf 0.9; 0.8 -> acc 1;
    # 0.6 -> acc 1
    expected = 0.5 * 0.4 + 0.25 * 0.2 + 0.25 * 0.4
    assert expected_calibration_error(p, y) == pytest.approx(expected)


def test_tta_makes_predictions_invariant(tmp_path):
    model = build_model("compact", input_size=64)
    card = ModelCard(
        name="m", architecture="compact", input_size=64, test_time_augmentation="dihedral+invert"
    )
    clf = Classifier(model, card)
    x = np.random.default_rng(1).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    assert len(tta_views(x[..., None].astype(np.float32), "dihedral+invert")) == 16
    base = clf.predict_proba(x)
    for variant in (np.rot90(x, 1, (1, 2)), x[:, :, ::-1], 255 - x):
        np.testing.assert_allclose(
            clf.predict_proba(np.ascontiguousarray(variant)), base, atol=1e-5
        )


def test_temperature_stays_inside_its_range_on_separable_validation():
    rng = np.random.default_rng(0)
    y = np.array([0] * 80 + [1] * 10)
    p_lat = np.where(y == 1, rng.uniform(0.9, 0.999, 90), rng.uniform(0.001, 0.1, 90))
    probs = np.stack([1 - p_lat, p_lat], axis=1)
    t = fit_temperature(probs, y)
    assert 0.02 < t < 50  # plain NLL would run to the lower bound
    assert fit_temperature(probs, y, smoothed=False) == pytest.approx(0.01, rel=1e-3)


def test_checkpoint_has_no_optimizer_state(tmp_path):
    import keras

    model = build_model("compact", input_size=32)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(np.zeros((4, 32, 32, 3), np.float32), np.zeros(4), verbose=0)
    path = save_checkpoint(
        model, ModelCard(name="m", architecture="compact", input_size=32), tmp_path
    )
    loaded = keras.saving.load_model(path, compile=False)
    assert getattr(loaded, "optimizer", None) is None
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)


def test_padded_batch_sizes_are_few_power_of_two_buckets():
    sizes = {padded_batch_size(n) for n in range(1, 65)}
    assert sizes == {8, 16, 32, 64}
    assert all(padded_batch_size(n) >= n for n in range(1, 3000))
    assert padded_batch_size(1025) == 2048


def test_padding_a_batch_to_its_bucket_keeps_every_answer(monkeypatch):
    # What a JAX worker does (one compiled shape per bucket), checked on this backend:
    # the zero images added to fill the bucket must not change the real ones' outputs.
    from cxr_orient import modelstore

    clf = Classifier(
        build_model("compact", input_size=64),
        ModelCard(name="m", architecture="compact", input_size=64),
    )
    x = np.random.default_rng(2).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    plain = clf.predict_raw(x)
    calls = []
    original = clf.model.predict_on_batch

    def counting(batch):
        calls.append(len(batch))
        return original(batch)

    monkeypatch.setattr(clf.model, "predict_on_batch", counting)
    monkeypatch.setattr(modelstore, "_compiles_per_shape", lambda: True)
    padded = clf.predict_raw(x)
    assert calls == [8]
    assert padded.shape == (5, 2)
    np.testing.assert_allclose(padded, plain, atol=1e-6)


def test_warm_up_runs_one_batch_here_and_every_bucket_where_shapes_compile(monkeypatch):
    from cxr_orient import modelstore

    clf = Classifier(
        build_model("compact", input_size=32),
        ModelCard(name="m", architecture="compact", input_size=32),
    )
    assert clf.warm_up(32) == [32]
    monkeypatch.setattr(modelstore, "_compiles_per_shape", lambda: True)
    assert clf.warm_up(32) == [8, 16, 32]
    assert clf.warm_up(100) == [8, 16, 32, 64, 128]


def test_mixed_bfloat16_copy_computes_in_bfloat16_and_answers_alike():
    from cxr_orient.modelstore import with_mixed_bfloat16

    card = ModelCard(name="m", architecture="compact", input_size=32)
    model = build_model("compact", input_size=32)
    mixed = with_mixed_bfloat16(model, card)
    assert mixed.layers[-1].dtype_policy.name == "float32"  # the softmax stays float32
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in mixed.layers)
    assert all(w.dtype == "float32" for w in mixed.weights)
    x = np.random.default_rng(4).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    full, half = Classifier(model, card).predict_raw(x), Classifier(mixed, card).predict_raw(x)
    np.testing.assert_allclose(half, full, atol=0.02)
    import keras

    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_workers_serve_the_mixed_bfloat16_copy_when_configured(configure, sqlite_url, tmp_path):
    from cxr_orient.registry import load_version, register_checkpoint
    from db.migrate import upgrade
    from db.session import session_scope

    configure(database_url=sqlite_url, data_dir=tmp_path / "data", ingest_root=tmp_path)
    upgrade()
    card = ModelCard(name="m", architecture="compact", input_size=32)
    path = save_checkpoint(build_model("compact", input_size=32), card, tmp_path / "m")
    with session_scope() as session:
        version = register_checkpoint(session, path, actor="test", reason="test")
        plain = load_version(version, get_settings().inference)
        configure(mixed_precision="bfloat16")
        mixed = load_version(version, get_settings().inference)
    assert {layer.dtype_policy.name for layer in plain.classifier.model.layers} == {"float32"}
    assert {layer.dtype_policy.name for layer in mixed.classifier.model.layers} >= {
        "mixed_bfloat16",
        "float32",
    }
