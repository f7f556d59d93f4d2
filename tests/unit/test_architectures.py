import numpy as np
import pytest

from cxr_orient.architectures import ARCHITECTURES, build_model
from cxr_orient.errors import ModelError
from cxr_orient.modelstore import load_checkpoint


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


@pytest.mark.parametrize("name", ["compact", "tutorial2019"])
def test_keras_round_trip(tmp_path, name):
    model = build_model(name, input_size=64)
    x = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3)).astype(np.float32)
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
