"""The backbone registry builds headless, frozen networks with each weights setting."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import backbones


def test_every_backbone_builds_headless_with_random_weights():
    for name in backbones.BACKBONES:
        base = backbones.build_frozen_base(name, image_size=64, weights="none")
        assert not base.trainable
        assert len(base.output_shape) == 4, f"{name} should return a feature map"


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="choose one of: efficientnet_lite0, mobilenet_v2"):
        backbones.get_backbone("resnet9000")


def test_local_weights_file_is_loaded(tmp_path):
    source = backbones.build_frozen_base("mobilenet_v2", image_size=64, weights="none")
    path = str(tmp_path / "mobilenet.h5")
    source.save_weights(path)
    loaded = backbones.build_frozen_base("mobilenet_v2", image_size=64, weights=path)
    for expected, actual in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(expected, actual)


def test_efficientnet_lite0_imagenet_weights_come_from_the_installed_package():
    base = backbones.build_frozen_base("efficientnet_lite0", image_size=64, weights="imagenet")
    random = backbones.build_frozen_base("efficientnet_lite0", image_size=64, weights="none")
    stem = base.get_layer("stem_conv").get_weights()[0]
    assert not np.allclose(stem, random.get_layer("stem_conv").get_weights()[0])


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("mobilenet_v2", -1.0, 1.0), ("efficientnet_lite0", -127 / 128, 1.0)],
)
def test_preprocess_maps_pixel_range_as_the_backbone_expects(name, low, high):
    pixels = tf.constant([[0.0, 255.0]])
    scaled = backbones.get_backbone(name).preprocess(pixels).numpy()
    np.testing.assert_allclose(scaled, [[low, high]], atol=1e-6)
