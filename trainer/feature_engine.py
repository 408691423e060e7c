"""Runs the frozen part of the network once over the data, for the cached-feature fast path.

Two engines compute the same function:

* ``tensorflow``: Keras `predict` on the frozen model (any device, any
  distribution strategy, mixed precision).
* ``tflite``: the frozen model converted to TensorFlow Lite and run by its
  XNNPACK CPU kernels, which are faster than TensorFlow's own on CPUs for the
  depthwise and 1x1 convolutions of mobile backbones. The conversion freezes
  the weights into a flatbuffer in memory, a cost paid once per frozen model
  (with the check below), not per image.

``auto`` (the default) takes TFLite where it can only help: no GPU, one
replica, float32 compute. Every TFLite model is checked against the Keras model
on real training images before it is used; when a conversion fails or the two
disagree, ``auto`` falls back to TensorFlow (and says why in the log), while an
explicit ``tflite`` fails the Trainer naming the setting.

Only the cached inputs come from this engine. The trainable part trains in
TensorFlow, and the exported model is the Keras model in TensorFlow.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.python.framework import convert_to_constants

from trainer.config import (
    FEATURE_ENGINE_AUTO,
    FEATURE_ENGINE_TENSORFLOW,
    FEATURE_ENGINE_TFLITE,
)
from trainer.errors import one_line

CHECK_IMAGES = 8
"""Training images each TFLite model is checked on against the Keras model."""
RELATIVE_TOLERANCE = 1e-3
"""Largest accepted |TFLite - Keras| per output, relative to the output's largest magnitude."""

Outputs = list[np.ndarray]
"""The frozen model's outputs for one batch, in `model.outputs` order."""


class FeatureEngineError(RuntimeError):
    """The TFLite engine cannot run the frozen model, or disagrees with Keras."""


def cpu_threads(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota.

    A container limited to 4 CPUs on a 64-core node (a Kubeflow Trainer pod)
    gets 4, where `os.cpu_count()` would say 64.
    """
    if hasattr(os, "sched_getaffinity"):
        threads = len(os.sched_getaffinity(0))
    else:
        threads = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(threads, math.ceil(quota)) if quota else threads)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; None if unlimited."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def tflite_applies(setting: str) -> bool:
    """Whether `setting` asks for TFLite here: "tflite", or "auto" on one float32 CPU replica."""
    if setting == FEATURE_ENGINE_TFLITE:
        return True
    if setting != FEATURE_ENGINE_AUTO:
        return False
    return (
        not tf.config.list_logical_devices("GPU")
        and tf.distribute.get_strategy().num_replicas_in_sync == 1
        and tf.keras.mixed_precision.global_policy().compute_dtype == "float32"
    )


class TFLiteModel:
    """A frozen Keras model as TFLite: numpy batches in, its outputs out.

    Not thread-safe: one interpreter, resized to each batch's size.
    """

    def __init__(self, model: tf.keras.Model, num_threads: int | None = None) -> None:
        """Converts `model` (single input, float32) to TFLite, in memory.

        Raises:
            FeatureEngineError: The model has several inputs, or the converter fails.
        """
        if len(model.inputs) != 1:
            raise FeatureEngineError(f"{model.name} has {len(model.inputs)} inputs; "
                                     "the TFLite engine runs single-input models")
        spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32, name="images")
        run = tf.function(
            lambda images: tuple(tf.nest.flatten(model(images, training=False))),
            input_signature=[spec], autograph=False,
        )
        try:
            frozen = convert_to_constants.convert_variables_to_constants_v2(
                run.get_concrete_function())
            content = tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert()
        except Exception as error:  # noqa: BLE001 (the converter raises many types)
            raise FeatureEngineError(
                f"TFLite cannot convert {model.name}: {one_line(error)}") from error
        self._interpreter = tf.lite.Interpreter(
            model_content=content, num_threads=num_threads or cpu_threads())
        (self._input,) = self._interpreter.get_input_details()
        by_name = {detail["name"]: detail["index"] for detail in
                   self._interpreter.get_output_details()}
        names = [tensor.name.split(":")[0] for tensor in frozen.outputs]
        if sorted(names) != sorted(by_name):
            raise FeatureEngineError(
                f"TFLite outputs {sorted(by_name)} do not match {model.name}'s {names}")
        self._outputs = [by_name[name] for name in names]
        self._batch_shape: tuple[int, ...] | None = None

    def __call__(self, images: np.ndarray) -> Outputs:
        """The model's outputs for a batch of images."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.shape != self._batch_shape:
            self._interpreter.resize_tensor_input(self._input["index"], images.shape)
            self._interpreter.allocate_tensors()
            self._batch_shape = images.shape
        self._interpreter.set_tensor(self._input["index"], images)
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(index).copy() for index in self._outputs]


def max_relative_difference(got: Outputs, expected: Outputs) -> float:
    """Largest |got - expected| over all outputs, each relative to its largest magnitude."""
    return max(
        float(np.max(np.abs(g - e)) / max(float(np.max(np.abs(e))), 1e-6))
        for g, e in zip(got, expected, strict=True)
    )


def checked_tflite_model(model: tf.keras.Model, check_images: np.ndarray) -> TFLiteModel:
    """`model` as TFLite, once it agrees with Keras on `check_images`.

    Raises:
        FeatureEngineError: The conversion failed or the outputs disagree by
            more than `RELATIVE_TOLERANCE`.
    """
    converted = TFLiteModel(model)
    expected = [np.asarray(t) for t in tf.nest.flatten(model(check_images, training=False))]
    difference = max_relative_difference(converted(check_images), expected)
    if not difference <= RELATIVE_TOLERANCE:  # NaN disagrees too
        raise FeatureEngineError(
            f"TFLite's {model.name} disagrees with Keras on {len(check_images)} training "
            f"images: outputs differ by {difference:.2e} of their range, over "
            f"{RELATIVE_TOLERANCE:g}")
    logging.info("TFLite engine for %s agrees with Keras (relative difference %.1e)",
                 model.name, difference)
    return converted


def tflite_or_none(
    model: tf.keras.Model, setting: str, check_images: Callable[[], np.ndarray]
) -> TFLiteModel | None:
    """The checked TFLite engine for `model` where `setting` applies it, else None.

    Args:
        model: The frozen model whose outputs are cached.
        setting: `TrainingConfig.feature_engine`.
        check_images: Gives a few real input images to check the engine on.

    Raises:
        FeatureEngineError: `setting` is "tflite" and the engine cannot be used.
    """
    if not tflite_applies(setting):
        return None
    try:
        return checked_tflite_model(model, check_images())
    except FeatureEngineError as error:
        if setting == FEATURE_ENGINE_TFLITE:
            raise FeatureEngineError(
                f"{error}; set training.feature_engine: {FEATURE_ENGINE_AUTO} or "
                f"{FEATURE_ENGINE_TENSORFLOW}") from error
        logging.warning("Caching %s's outputs with TensorFlow: %s", model.name, error)
        return None

