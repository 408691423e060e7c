"""The feature engines: TFLite gives Keras outputs in order; when it applies; auto measures."""

import os
import time

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


def test_the_tensorflow_engine_gives_keras_outputs_in_the_models_order():
    model = _two_output_model()
    engine = feature_engine.TensorFlowModel(model)
    for count in (5, 2):
        images = _images(count)
        got = engine(images)
        assert [g.shape for g in got] == [(count, 8, 8, 4), (count, 4)]
        expected = [t.numpy() for t in model(images, training=False)]
        assert feature_engine.max_relative_difference(got, expected) < 1e-6


class _Doubling:
    """An engine computing 2 * images, sleeping `seconds` per call, counting its calls."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls = seconds, 0

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        self.calls += 1
        time.sleep(self.seconds)
        return [images * 2]


@pytest.mark.parametrize("slow_first", [True, False])
def test_auto_times_both_engines_on_the_first_batches_then_runs_only_the_faster(slow_first):
    slow, fast = _Doubling(0.05), _Doubling(0.0)
    engines = {"tensorflow": slow, "tflite": fast} if slow_first else {
        "tensorflow": fast, "tflite": slow}
    measured = feature_engine.MeasuredEngine(engines, timed_batches=2)
    for batch in range(6):
        images = np.full((4, 2), batch, np.float32)
        (got,) = measured(images)
        np.testing.assert_array_equal(got, np.full((4, 2), 2 * batch))
    faster = "tflite" if slow_first else "tensorflow"
    assert measured.name == faster
    assert (slow.calls, fast.calls) == (3, 6)  # warm-up and 2 timed batches, then no more
    rates = measured.rates
    assert set(rates) == {"tensorflow", "tflite"}
    slower = "tensorflow" if slow_first else "tflite"
    assert rates[slower] <= 4 / 0.05  # 4 images per call, each call sleeps 0.05 s
    assert rates[faster] > rates[slower]


def test_auto_on_a_single_batch_times_it_when_asked_for_its_choice():
    slow, fast = _Doubling(0.05), _Doubling(0.0)
    measured = feature_engine.MeasuredEngine({"tensorflow": slow, "tflite": fast})
    (got,) = measured(np.ones((3, 2), np.float32))
    np.testing.assert_array_equal(got, np.full((3, 2), 2.0))
    assert measured.name == "tflite"
    assert (slow.calls, fast.calls) == (2, 2)
    assert measured.rates["tensorflow"] <= 3 / 0.05
    with pytest.raises(feature_engine.FeatureEngineError, match="no batch was run"):
        feature_engine.MeasuredEngine({"tensorflow": slow}).name  # noqa: B018
