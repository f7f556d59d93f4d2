import numpy as np
import pytest

from training.augment import augment_batch, augment_image
from training.data import grouped_stratified_split
from training.evaluate import binary_metrics, confusion_matrix, roc_auc
from training.train import balanced_class_weights, train_model


def test_augment_keeps_shape_dtype_and_is_seeded():
    img = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    a = augment_image(img, np.random.default_rng(5))
    b = augment_image(img, np.random.default_rng(5))
    assert a.shape == (64, 64) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    batch = augment_batch(np.stack([img] * 4), np.random.default_rng(1))
    assert batch.shape == (4, 64, 64)


def test_grouped_split_never_shares_a_patient():
    rng = np.random.default_rng(0)
    groups = [f"p{rng.integers(0, 60)}" for _ in range(300)]
    labels = np.array([int(g in {"p1", "p2", "p3", "p7", "p9", "p11"}) for g in groups])
    split = grouped_stratified_split(labels, groups, seed=3)
    sides = [{groups[i] for i in idx} for idx in (split.train, split.val, split.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert len(split.train) + len(split.val) + len(split.test) == 300
    assert all(labels[idx].sum() > 0 for idx in (split.train, split.val, split.test))


def test_metrics_match_hand_computed():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.3, 0.8, 0.4])
    np.testing.assert_array_equal(confusion_matrix(y, (p >= 0.5).astype(int)), [[2, 1], [1, 1]])
    m = binary_metrics(y, p)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["lateral_precision"] == pytest.approx(1 / 2)
    assert m["frontal_recall"] == pytest.approx(2 / 3)
    # positive scores 0.8, 0.4 vs negatives 0.1, 0.6, 0.3: 3 + 2 wins of 6 pairs
    assert roc_auc(y, p) == pytest.approx(5 / 6)
    assert roc_auc(y, np.full(5, 0.5)) == pytest.approx(0.5)


def test_class_weights_balance():
    w = balanced_class_weights(np.array([0] * 10 + [1]))
    assert w[1] / w[0] == pytest.approx(10)


def test_train_model_tiny():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 64, 64), dtype=np.uint8)
    labels = np.array([0] * 18 + [1] * 6)
    model, history = train_model(
        images,
        labels,
        architecture="compact",
        epochs=1,
        batch_size=8,
        seed=0,
        val_fraction=0.25,
        verbose=0,
    )
    assert model.output_shape == (None, 2)
    assert history.epochs_run == 1 and history.temperature > 0


def test_augment_always_draws_one_of_the_eight_orientations():
    from training.augment import AugmentConfig

    cfg = AugmentConfig(
        p_crop=0.0, p_zoom_out=0.0, p_intensity=0.0, p_noise=0.0, p_small_rotation=0.0, p_invert=0.0
    )
    img = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    views = {np.rot90(f, k).tobytes() for f in (img, img[:, ::-1]) for k in range(4)}
    seen = {augment_image(img, np.random.default_rng(s), cfg).tobytes() for s in range(200)}
    assert seen == views  # every orientation, and nothing else


def test_zoom_out_shrinks_the_film_onto_a_dark_canvas():
    from training.augment import AugmentConfig

    cfg = AugmentConfig(
        p_crop=0.0,
        p_zoom_out=1.0,
        zoom_out_min=0.5,
        p_intensity=0.0,
        p_noise=0.0,
        p_small_rotation=0.0,
        p_invert=0.0,
        p_rot90=0.0,
        p_hflip=0.0,
    )
    img = np.full((64, 64), 200, np.uint8)
    img[0, 0] = 10  # the darkest level fills the canvas
    shrunk = [augment_image(img, np.random.default_rng(s), cfg) for s in range(20)]
    assert all(x.shape == img.shape and x.dtype == np.uint8 for x in shrunk)
    film = [int((x > 100).sum()) for x in shrunk]
    assert all(0.25 * 64 * 64 * 0.8 < n < 64 * 64 for n in film)  # 50-100 % of each side
    assert all(set(np.unique(x[x <= 100])) <= set(range(10, 101)) for x in shrunk)
    assert len(set(film)) > 5  # the scale is drawn, not fixed


def _untrained_classifier(size: int = 32):
    from cxr_orient.architectures import build_model
    from cxr_orient.modelstore import Classifier, ModelCard

    card = ModelCard(name="untrained", architecture="compact", input_size=size)
    return Classifier(build_model("compact", input_size=size), card)


def test_view_metrics_cover_sixteen_views():
    from training.train import validation_views, view_metrics

    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32), dtype=np.uint8)
    assert len(validation_views(images)) == 16
    m = view_metrics(_untrained_classifier(), images, np.array([0, 0, 0, 0, 1, 1]))
    assert m["views"] == 16 and len(m["raw"]) == 16 and m["nll_mean"] > 0


def _tiny_teacher(tmp_path, name):
    from cxr_orient.architectures import build_model
    from cxr_orient.modelstore import ModelCard, save_checkpoint

    card = ModelCard(name=name, architecture="compact", input_size=32)
    return save_checkpoint(build_model("compact", input_size=32), card, tmp_path)


def test_distillation_targets_mix_label_and_teachers_mean(tmp_path):
    from cxr_orient.modelstore import to_model_input
    from training.train import AugmentedBatches, TeacherEnsemble

    teacher = TeacherEnsemble([_tiny_teacher(tmp_path, "a"), _tiny_teacher(tmp_path, "b")])
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 0, 0])
    batches = AugmentedBatches(
        images, labels, batch_size=6, seed=0, augment=None, teacher=teacher, distill_weight=0.25
    )
    x, y, w = batches[0]
    order = batches._order
    means = np.mean([np.asarray(m.predict_on_batch(x)) for m in teacher.models], axis=0)
    expected = 0.75 * np.eye(2)[labels[order]] + 0.25 * means
    np.testing.assert_allclose(x, to_model_input(images[order]))
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(w, 1.0)  # no class weights given: every image counts once
    assert not np.allclose(y, np.eye(2)[labels[order]])  # the teachers moved the targets
    with pytest.raises(ValueError, match="distill_weight"):
        AugmentedBatches(images, labels, batch_size=6, seed=0, teacher=teacher, distill_weight=1.5)


def test_train_model_distilled_records_its_teachers(tmp_path):
    from cxr_orient.modelstore import read_card

    path = _tiny_teacher(tmp_path, "t")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 32, 32), dtype=np.uint8)
    labels = np.array([0] * 18 + [1] * 6)
    model, history = train_model(
        images,
        labels,
        architecture="compact",
        epochs=1,
        batch_size=8,
        seed=0,
        val_fraction=0.25,
        verbose=0,
        teacher_paths=[path],
        distill_weight=0.5,
    )
    assert model.output_shape == (None, 2)
    assert history.params["distilled_from"] == [
        {"file": "t.keras", "sha256": read_card(path).sha256}
    ]
    assert history.params["distill_weight"] == 0.5


def test_selection_compares_calibrated_nll_when_cards_have_it():
    from training.gate import selection_key

    sharp = {
        "lateral_recall_mean": 1.0,
        "balanced_accuracy_mean": 1.0,
        "nll_mean": 0.005,
        "nll_calibrated_mean": 0.004,
    }
    soft = {
        "lateral_recall_mean": 1.0,
        "balanced_accuracy_mean": 1.0,
        "nll_mean": 0.013,
        "nll_calibrated_mean": 0.003,
    }
    worse_recall = {**soft, "lateral_recall_mean": 0.99}
    assert max([sharp, soft, worse_recall], key=selection_key) is soft
    assert (
        selection_key(
            {"lateral_recall_mean": 1.0, "balanced_accuracy_mean": 1.0, "nll_mean": 0.01}
        )[2]
        == -0.01
    )
    from training.train import view_metrics

    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    out = view_metrics(_untrained_classifier(), images, np.array([0, 0, 1, 1]), temperature=2.0)
    assert out["nll_calibrated_mean"] > 0
