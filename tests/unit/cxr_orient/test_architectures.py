import numpy as np
import pytest

from cxr_orient.architectures import ARCHITECTURES, INVARIANT_ARCHITECTURES, build_model
from cxr_orient.errors import ModelError
from cxr_orient.modelstore import load_checkpoint
from cxr_orient.settings import SHIPPED_MODEL

SHIPPED = SHIPPED_MODEL.parent


def test_compact_shape_params_and_softmax():
    model = build_model("compact", input_size=64)
    assert model.input_shape == (None, 64, 64, 3)
    assert model.output_shape == (None, 2)
    assert model.count_params() < 1_000_000
    out = np.asarray(model.predict_on_batch(np.full((2, 64, 64, 3), 128, np.float32)))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_tutorial2019_parameter_count_at_256():
    model = build_model("tutorial2019", input_size=256)
    assert 125_000_000 < model.count_params() < 135_000_000


def test_registry_names_and_unknown():
    assert {"tutorial2019", "compact", "vgg16", "mobilenetv3small"} <= set(ARCHITECTURES)
    with pytest.raises(ModelError):
        build_model("resnet9000")


@pytest.mark.parametrize(
    "name", ["compact", "tutorial2019", "compact_invariant", "compact_invariant_64"]
)
def test_keras_round_trip(tmp_path, name):
    model = build_model(name, input_size=128)
    x = np.random.default_rng(0).integers(0, 256, (3, 128, 128, 3)).astype(np.float32)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = load_checkpoint(path)
    np.testing.assert_allclose(
        np.asarray(loaded.predict_on_batch(x)), np.asarray(model.predict_on_batch(x)), atol=1e-6
    )


def test_compact_wide_is_under_a_million_parameters():
    model = build_model("compact_wide", input_size=64)
    assert 500_000 < model.count_params() < 1_000_000
    assert model.output_shape == (None, 2)


def test_imagenet_weights_are_found_only_in_the_configured_folder(tmp_path) -> None:
    from cxr_orient.architectures import IMAGENET_WEIGHT_FILES, imagenet_weights_for

    assert imagenet_weights_for("vgg16", None) is None
    assert imagenet_weights_for("vgg16", tmp_path) is None  # missing: from scratch
    assert imagenet_weights_for("compact", tmp_path) is None  # no pretrained backbone
    expected = tmp_path / IMAGENET_WEIGHT_FILES["mobilenetv3small"]
    expected.write_bytes(b"")
    assert imagenet_weights_for("mobilenetv3small", tmp_path) == expected


def _sixteen_views(x: np.ndarray) -> list[np.ndarray]:
    from cxr_orient.modelstore import tta_views

    return tta_views(x, "dihedral+invert")


@pytest.mark.parametrize("name", sorted(INVARIANT_ARCHITECTURES))
def test_invariant_architectures_give_one_answer_for_all_sixteen_views(name):
    """Exact by construction, not learned: an untrained network must already agree."""
    import keras

    keras.utils.set_random_seed(1)  # the weights, so that "images differ" is not luck
    model = build_model(name, input_size=128)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (5, 128, 128, 3)).astype(np.float32)
    for i, image in enumerate(x):  # noise alone looks alike once averaged: add a shape
        image[10 + 15 * i : 60 + 10 * i, 20 : 40 + 15 * i] = 255.0

    def view_of(batch: np.ndarray) -> np.ndarray:
        out = model.predict_on_batch(batch)
        return np.asarray(out["view"] if isinstance(out, dict) else out)

    base = view_of(x)
    assert np.abs(base[:, 1] - base[:, 1].mean()).max() > 1e-4  # images differ
    for view in _sixteen_views(x):
        np.testing.assert_allclose(view_of(view), base, atol=1e-5)


def test_compact_invariant_is_not_invariant_to_what_matters():
    """Blanking half the frame does change the answer: the invariance is to the 16
    views only, not a network that ignores its input."""
    model = build_model("compact_invariant", input_size=64)
    x = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3)).astype(np.float32)
    half = x.copy()
    half[:, :32] = 0
    out = [np.asarray(model.predict_on_batch(v)) for v in (x, half)]
    assert np.abs(out[0] - out[1]).max() > 1e-5


def test_the_default_under_mixed_bfloat16_keeps_its_invariance():
    import keras

    from cxr_orient.modelstore import ModelCard, with_mixed_bfloat16

    model = build_model("compact_invariant_64", input_size=128)
    card = ModelCard(name="m", architecture="compact_invariant_64", input_size=128)
    try:
        mixed = with_mixed_bfloat16(model, card)
    finally:
        keras.config.set_dtype_policy("float32")
    x = np.random.default_rng(3).integers(0, 256, (2, 128, 128, 3)).astype(np.float32)
    base = np.asarray(mixed.predict_on_batch(x))
    np.testing.assert_allclose(base, np.asarray(model.predict_on_batch(x)), atol=0.05)
    for view in _sixteen_views(x)[1:4]:
        np.testing.assert_allclose(np.asarray(mixed.predict_on_batch(view)), base, atol=0.02)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("compact_invariant", 67),
        ("compact_invariant", 62),
        ("compact_invariant_64", 126),
        ("compact_invariant_64", 124),
    ],
)
def test_invariant_input_must_tile_and_survive_the_trunk(name, size):
    with pytest.raises(ValueError):
        build_model(name, input_size=size)


def test_command_defaults_name_the_default_architecture():
    """The CLI and the nightly retrain spell the default out (importing the registry
    would load Keras); they must not drift from it. Retraining defaults to ``auto``: the
    PA/AP refit while a headed model serves, else the default network."""
    import inspect

    from cli import models as cli
    from cxr_orient.architectures import DEFAULT_ARCHITECTURE
    from training import lifecycle

    assert DEFAULT_ARCHITECTURE == "compact_invariant_64"
    assert lifecycle.DEFAULT_RETRAIN_NETWORK == DEFAULT_ARCHITECTURE
    assert inspect.signature(lifecycle.retrain).parameters["architecture"].default == (
        lifecycle.AUTO
    )
    train_option = next(p for p in cli.train.params if p.name == "architecture")
    assert train_option.default == DEFAULT_ARCHITECTURE
    retrain_option = next(p for p in cli.retrain.params if p.name == "architecture")
    assert retrain_option.default == lifecycle.AUTO
    for name in ARCHITECTURES:
        assert name in cli.ARCHITECTURE_HELP


@pytest.mark.parametrize(
    "card", sorted(p.name for p in SHIPPED.glob("*.json") if p.name != "split.json")
)
def test_every_shipped_architecture_is_rebuilt_by_name(card: str) -> None:
    """A shipped checkpoint's architecture is in the registry and its graph takes the
    checkpoint's weights (what with_mixed_bfloat16 rebuilds by name)."""
    from cxr_orient.modelstore import read_card

    path = SHIPPED / card.replace(".json", ".keras")
    meta = read_card(path)
    assert meta.architecture in ARCHITECTURES
    rebuilt = build_model(meta.architecture, input_size=meta.input_size)
    rebuilt.set_weights(load_checkpoint(path).get_weights())
