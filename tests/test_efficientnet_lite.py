"""Tests for trainer.efficientnet_lite: the Keras port and its ImageNet weights."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_sample_image  # noqa: E402

from trainer import efficientnet_lite, safe_pth  # noqa: E402

# ImageNet-1k indices (standard ordering) that honestly describe the sample photos.
# china.jpg: a Chinese palace/temple roof by the water.
CHINA_CLASSES = {
    698: "palace",
    442: "bell cote",
    663: "monastery",
    975: "lakeside",
    483: "castle",
    832: "stupa",
    668: "mosque",
    538: "dome",
    449: "boathouse",
}
# flower.jpg: a close-up of a flower.
FLOWER_CLASSES = {985: "daisy", 738: "pot (flowerpot)", 883: "vase", 309: "bee"}


# -- helpers ---------------------------------------------------------------------------------


def _photo(name: str, size: int = 224) -> tf.Tensor:
    """Centre crop (the usual 224/256 ImageNet eval crop of the short side), resize, preprocess."""
    image = load_sample_image(name)
    height, width, _ = image.shape
    side = int(min(height, width) * 0.875)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[top : top + side, left : left + side].astype(np.float32)
    resized = tf.image.resize(crop[None], (size, size), method="bilinear", antialias=True)
    return efficientnet_lite.preprocess(resized)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return safe_pth.read_torch_state_dict(efficientnet_lite.imagenet_weights_path("lite0"))


@pytest.fixture(scope="module")
def classifier() -> tf.keras.Model:
    return efficientnet_lite.build_efficientnet_lite(
        "lite0", include_top=True, weights="imagenet"
    )


@pytest.fixture(scope="module")
def headless_small() -> tf.keras.Model:
    return efficientnet_lite.build_efficientnet_lite(
        "lite0", input_shape=(96, 96, 3), include_top=False, weights="imagenet"
    )


# -- the ImageNet checkpoint ----------------------------------------------------------------


def test_imagenet_checkpoint_reads_as_numpy(state_dict):
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert all(isinstance(v, np.ndarray) for v in state_dict.values())


# -- weight mapping --------------------------------------------------------------------------


def test_every_tensor_maps_to_a_keras_weight(state_dict):
    model = efficientnet_lite.build_efficientnet_lite("lite0", include_top=True)
    assigned = efficientnet_lite.load_torch_state_dict(model, state_dict)

    float_tensors = [k for k in state_dict if not k.endswith("num_batches_tracked")]
    assert sorted(assigned) == sorted(float_tensors)
    assert len(assigned) == len(model.weights) == len(set(assigned.values()))
    np.testing.assert_array_equal(
        model.get_layer("stem_conv").kernel.numpy(),
        np.transpose(state_dict["_conv_stem.weight"], (2, 3, 1, 0)),
    )


def test_mismatched_state_dict_raises_listing_problems(state_dict):
    model = efficientnet_lite.build_efficientnet_lite("lite0", input_shape=(32, 32, 3))
    broken = dict(state_dict)
    del broken["_blocks.3._bn0.running_var"]
    broken["_extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"(?s)block3a_expand_bn.*_extra\.weight"):
        efficientnet_lite.load_torch_state_dict(model, broken, load_classifier=False)


# -- the model -------------------------------------------------------------------------------


def test_headless_output_shape_and_layer_names(headless_small):
    output = headless_small(tf.zeros((1, 96, 96, 3)), training=False)
    assert output.shape == (1, 3, 3, 1280)
    for name in ("stem_conv", "block1a_dwconv", "block3b_expand_conv", "block6d_add", "top_conv"):
        headless_small.get_layer(name)


@pytest.mark.parametrize(
    ("photo", "expected"), [("china.jpg", CHINA_CLASSES), ("flower.jpg", FLOWER_CLASSES)]
)
def test_real_photos_get_sensible_imagenet_labels(classifier, photo, expected):
    probs = classifier(_photo(photo), training=False).numpy()[0]
    top5 = np.argsort(probs)[::-1][:5]
    print(photo, [(int(i), round(float(probs[i]), 3)) for i in top5])

    assert top5[0] in expected, f"top-1 {top5[0]} is not one of {expected}"
    assert probs[top5[0]] > 0.2


@pytest.mark.parametrize(("variant", "size"), [("lite1", 240), ("lite2", 260)])
def test_larger_variants_load_their_packages_weights(variant, size):
    """Lite1 and Lite2 come from their own weight packages, at their own image sizes."""
    model = efficientnet_lite.build_efficientnet_lite(
        variant, input_shape=(size, size, 3), include_top=True, weights="imagenet"
    )
    probs = model(_photo("china.jpg", size), training=False).numpy()[0]
    top1 = int(np.argmax(probs))
    print(variant, top1, round(float(probs[top1]), 3))

    assert top1 in CHINA_CLASSES, f"{variant} top-1 {top1} is not one of {CHINA_CLASSES}"
    assert probs[top1] > 0.2


def test_keras_weights_file_round_trip(headless_small, tmp_path):
    path = str(tmp_path / "lite0.h5")
    headless_small.save_weights(path)
    reloaded = efficientnet_lite.build_efficientnet_lite(
        "lite0", input_shape=(96, 96, 3), weights=path
    )
    np.testing.assert_array_equal(
        reloaded.get_layer("top_bn").moving_variance.numpy(),
        headless_small.get_layer("top_bn").moving_variance.numpy(),
    )


def test_unknown_variant_lists_choices():
    with pytest.raises(ValueError, match="lite0, lite1, lite2"):
        efficientnet_lite.build_efficientnet_lite("lite9")


def test_variant_table():
    assert efficientnet_lite.LITE_VARIANTS == {"lite0": 224, "lite1": 240, "lite2": 260}
    lite2 = efficientnet_lite.block_specs("lite2")
    assert lite2[0].filters_in == 32 and lite2[-1].filters_out == 352
    assert len(efficientnet_lite.block_specs("lite0")) == 16
