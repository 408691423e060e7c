"""The TFLite feature engine: same outputs as Keras, in order; when it applies; its errors."""

import os

import numpy as np
import pytest
import tensorflow as tf

from trainer import backbones, feature_engine
from trainer.config import (
    FEATURE_ENGINE_AUTO,
    FEATURE_ENGINE_TENSORFLOW,
    FEATURE_ENGINE_TFLITE,
    TrainingConfig,
)
from trainer.config_file import ConfigError


def _two_output_model() -> tf.keras.Model:
    """A frozen conv net with two outputs of different shapes (like a residual boundary)."""
    tf.keras.utils.set_random_seed(0)
    image = tf.keras.Input((16, 16, 3))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu")(image)
    x = tf.keras.layers.BatchNormalization()(x)
    pooled = tf.keras.layers.GlobalAveragePooling2D()(x)
    branch = tf.keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    model = tf.keras.Model(image, [branch, pooled], name="two_outputs")
    model.trainable = False
    return model


def _images(count: int, size: int = 16, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.uniform(-1, 1, (count, size, size, 3)) * scale).astype(np.float32)


def test_tflite_gives_keras_outputs_in_the_models_order_for_any_batch_size():
    model = _two_output_model()
    engine = feature_engine.TFLiteModel(model, num_threads=1)
    for count in (5, 2, 5):  # resized both ways
        images = _images(count)
        expected = [t.numpy() for t in model(images, training=False)]
        got = engine(images)
        assert [g.shape for g in got] == [(count, 8, 8, 4), (count, 4)]
        assert feature_engine.max_relative_difference(got, expected) < 1e-5


def test_a_real_backbone_agrees_with_keras_on_tflite():
    base = backbones.build_frozen_base("efficientnet_lite0", 32, "imagenet")
    images = _images(4, size=32)
    engine = feature_engine.checked_tflite_model(base, images)
    expected = [base(images, training=False).numpy()]
    assert feature_engine.max_relative_difference(engine(images), expected) < 1e-4


def test_max_relative_difference_is_relative_to_each_outputs_range():
    expected = [np.array([[100.0, -200.0]]), np.array([[0.5]])]
    assert feature_engine.max_relative_difference(
        [np.array([[101.0, -200.0]]), np.array([[0.5]])], expected) == pytest.approx(1 / 200)
    assert feature_engine.max_relative_difference(
        [expected[0], np.array([[0.6]])], expected) == pytest.approx(0.2)
    assert np.isnan(feature_engine.max_relative_difference(
        [np.array([[np.nan, 0.0]]), expected[1]], expected))


def test_where_tflite_applies():
    assert feature_engine.tflite_applies(FEATURE_ENGINE_TFLITE)
    assert not feature_engine.tflite_applies(FEATURE_ENGINE_TENSORFLOW)
    assert feature_engine.tflite_applies(FEATURE_ENGINE_AUTO)  # this CPU-only machine
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        assert not feature_engine.tflite_applies(FEATURE_ENGINE_AUTO)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_auto_falls_back_to_tensorflow_and_tflite_fails_naming_the_setting():
    first, second = tf.keras.Input((4,)), tf.keras.Input((4,))
    two_inputs = tf.keras.Model(
        [first, second], tf.keras.layers.Add()([first, second]), name="two_inputs")
    check = lambda: np.zeros((2, 4), np.float32)  # noqa: E731
    assert feature_engine.tflite_or_none(two_inputs, FEATURE_ENGINE_AUTO, check) is None
    assert feature_engine.tflite_or_none(two_inputs, FEATURE_ENGINE_TENSORFLOW, check) is None
    with pytest.raises(feature_engine.FeatureEngineError,
                       match=r"two_inputs has 2 inputs.*set training.feature_engine: auto"):
        feature_engine.tflite_or_none(two_inputs, FEATURE_ENGINE_TFLITE, check)


def test_the_setting_is_validated():
    assert TrainingConfig(feature_engine="tflite").validate().feature_engine == "tflite"
    with pytest.raises(ConfigError, match=r"feature_engine must be one of \('auto', "
                                          r"'tensorflow', 'tflite'\), got 'xla'"):
        TrainingConfig(feature_engine="xla").validate()


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_cpu_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert feature_engine.cgroup_cpu_quota(str(tmp_path)) == expected
    threads = feature_engine.cpu_threads(str(tmp_path))
    assert 1 <= threads <= len(os.sched_getaffinity(0))
    if expected is not None:
        assert threads <= max(1, int(np.ceil(expected)))
