"""The backbone registry: every network builds, preprocesses as Keras does, cuts and loads."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import backbones, hub

# Each Keras entry's own preprocess_input, whose semantics Transform must reproduce.
KERAS_PREPROCESS = {
    "mobilenet_v2": tf.keras.applications.mobilenet_v2.preprocess_input,
    "efficientnet_b0": tf.keras.applications.efficientnet.preprocess_input,
    "efficientnet_b1": tf.keras.applications.efficientnet.preprocess_input,
    "efficientnet_b2": tf.keras.applications.efficientnet.preprocess_input,
    "efficientnet_b3": tf.keras.applications.efficientnet.preprocess_input,
    "resnet50": tf.keras.applications.resnet50.preprocess_input,
    "resnet50_v2": tf.keras.applications.resnet_v2.preprocess_input,
    "vgg16": tf.keras.applications.vgg16.preprocess_input,
    "vgg19": tf.keras.applications.vgg19.preprocess_input,
    "inception_v3": tf.keras.applications.inception_v3.preprocess_input,
    "xception": tf.keras.applications.xception.preprocess_input,
    "densenet121": tf.keras.applications.densenet.preprocess_input,
}
PIXELS = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)


def test_registry_has_every_common_backbone():
    assert set(backbones.BACKBONES) == {
        "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
        "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
        "resnet50", "resnet50_v2", "vgg16", "vgg19", "inception_v3", "xception", "densenet121",
    }


def test_every_backbone_builds_headless_and_frozen_with_random_weights():
    for name, backbone in backbones.BACKBONES.items():
        base = backbones.build_frozen_base(name, backbone.min_image_size, weights="none")
        assert not base.trainable and not base.trainable_weights, name
        assert len(base.output_shape) == 4, f"{name} should return a feature map"
        # Seventeen networks kept in Keras' global state make each next build slower.
        del base
        tf.keras.backend.clear_session()


@pytest.mark.parametrize("name", sorted(KERAS_PREPROCESS))
def test_preprocess_matches_keras_preprocess_input(name):
    expected = KERAS_PREPROCESS[name](PIXELS.copy())
    actual = backbones.get_backbone(name).preprocess(tf.constant(PIXELS)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_mobilenet_v3_gets_its_rescaling_from_transform_instead_of_inside(name):
    constructor = {"mobilenet_v3_small": tf.keras.applications.MobileNetV3Small,
                   "mobilenet_v3_large": tf.keras.applications.MobileNetV3Large}[name]
    keras_way = constructor(input_shape=(32, 32, 3), include_top=False, weights=None)
    ours = backbones.build_base(name, 32, "none")
    ours.set_weights(keras_way.get_weights())
    backbone = backbones.get_backbone(name)
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        ours(backbone.preprocess(pixels), training=False).numpy(),
        keras_way(pixels, training=False).numpy(),
        rtol=1e-4, atol=1e-4,
    )


def test_keras_efficientnet_normalizes_inside_so_transform_passes_pixels():
    pixels = tf.constant(PIXELS)
    np.testing.assert_array_equal(
        backbones.get_backbone("efficientnet_b0").preprocess(pixels).numpy(), PIXELS)
    base = backbones.build_base("efficientnet_b0", 32, "none")
    assert any(isinstance(layer, tf.keras.layers.Rescaling) for layer in base.layers)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("mobilenet_v2", -1.0, 1.0), ("efficientnet_lite0", -127 / 128, 1.0)],
)
def test_preprocess_maps_pixel_range_as_the_backbone_expects(name, low, high):
    pixels = tf.constant([[0.0, 255.0]])
    scaled = backbones.get_backbone(name).preprocess(pixels).numpy()
    np.testing.assert_allclose(scaled, [[low, high]], atol=1e-6)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="choose one of: densenet121, efficientnet_b0.*hub:"):
        backbones.get_backbone("resnet9000")


# ----------------------------------------------------------------------- cut layers


def test_cut_layer_inside_the_network():
    base = backbones.build_base("inception_v3", 75, "none", cut_layer="mixed7")
    assert base.output_shape == (None, 3, 3, 768)
    assert base.layers[-1].name == "mixed7"


def test_cut_layer_in_the_classification_top_builds_the_top():
    base = backbones.build_frozen_base("vgg16", 32, "none", cut_layer="fc2")
    assert base.output_shape == (None, 4096)
    assert [layer.name for layer in base.layers][-3:] == ["flatten", "fc1", "fc2"]


def test_unknown_cut_layer_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"cut_layer='mixed77' is not a layer of inception_v3; "
                                         r"its layers are: conv2d, .*mixed7, .*mixed10"):
        backbones.check_cut_layer("inception_v3", "mixed77")


def test_cut_in_the_top_with_imagenet_weights_needs_their_input_size():
    with pytest.raises(ValueError, match="set image_size to 224"):
        backbones.build_base("vgg16", 64, "imagenet", cut_layer="fc2")


def test_auto_named_layers_mean_the_same_layer_every_build():
    names = backbones.layer_names("inception_v3")
    tf.keras.layers.Conv2D(1, 1)  # a layer made in between must not shift the names
    base = backbones.build_base("inception_v3", 75, "none", cut_layer="conv2d_5")
    assert "conv2d_5" in names and base.layers[-1].name == "conv2d_5"


# -------------------------------------------------------------------------- weights


def test_local_weights_file_is_loaded(tmp_path):
    source = backbones.build_frozen_base("mobilenet_v2", image_size=64, weights="none")
    path = str(tmp_path / "mobilenet.h5")
    source.save_weights(path)
    loaded = backbones.build_frozen_base("mobilenet_v2", image_size=64, weights=path)
    for expected, actual in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(expected, actual)


@pytest.mark.parametrize("weights", ["imagenet", "package"])
def test_efficientnet_lite0_imagenet_weights_come_from_the_installed_package(weights):
    base = backbones.build_frozen_base("efficientnet_lite0", image_size=64, weights=weights)
    random = backbones.build_frozen_base("efficientnet_lite0", image_size=64, weights="none")
    stem = base.get_layer("stem_conv").get_weights()[0]
    assert not np.allclose(stem, random.get_layer("stem_conv").get_weights()[0])


def test_package_weights_only_for_entries_with_a_package():
    with pytest.raises(ValueError, match="vgg16 has no weights package"):
        backbones.resolve_weights("package", "vgg16")


def test_a_missing_weights_file_is_named():
    with pytest.raises(ValueError, match=r"weights='/no/such\.h5'"):
        backbones.resolve_weights("/no/such.h5", "vgg16")


# ---------------------------------------------------------------------------- TF-Hub


def save_feature_vector(path, dims: int = 6) -> str:
    """A tiny TF2 feature-vector SavedModel, as TF-Hub publishes them (Keras-saved)."""
    model = tf.keras.Sequential([
        tf.keras.layers.Conv2D(dims, 3, input_shape=(None, None, 3)),
        tf.keras.layers.BatchNormalization(),
        tf.keras.layers.GlobalAveragePooling2D(),
    ])
    tf.saved_model.save(model, str(path))
    return str(path)


def test_hub_feature_vector_is_a_backbone(tmp_path):
    path = save_feature_vector(tmp_path / "fv")
    name = backbones.HUB_PREFIX + path
    backbone = backbones.get_backbone(name)
    assert backbone.default_image_size == hub.HUB_IMAGE_SIZE
    np.testing.assert_allclose(backbone.preprocess(tf.constant([0.0, 255.0])).numpy(), [0, 1])
    base = backbones.build_frozen_base(name, 32, "imagenet")
    assert base.output_shape == (None, 6)
    assert not base.trainable_weights


def test_hub_backbone_errors_are_named(tmp_path):
    with pytest.raises(ValueError, match="is not a SavedModel directory"):
        backbones.get_backbone(f"hub:{tmp_path}")
    name = backbones.HUB_PREFIX + save_feature_vector(tmp_path / "fv")
    with pytest.raises(ValueError, match="carries its own weights"):
        backbones.resolve_weights("none", name)
    with pytest.raises(ValueError, match="cannot be cut"):
        backbones.check_cut_layer(name, "conv2d")
