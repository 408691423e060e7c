"""Runs the frozen part of the network once over the data, for the cached-feature fast path.

Two engines compute the same function:

* ``tensorflow``: Keras `predict` on the frozen model (any device, any
  distribution strategy, mixed precision).
* ``tflite``: the frozen model converted to TensorFlow Lite and run by its
  XNNPACK CPU kernels, which are faster than TensorFlow's own on CPUs for the
  depthwise and 1x1 convolutions of mobile backbones. The conversion freezes
  the weights into a flatbuffer in memory, a cost paid once per frozen model
  (with the check below), not per image.

``auto`` (the default) measures instead of assuming: where TFLite can run (no
GPU, one replica, float32 compute) it times both engines on the first batches
of real images (`MeasuredEngine`: one warm-up batch each, then
`TIMED_BATCHES` timed ones, in alternating order) and runs the rest on the
faster, recording both rates. Which is faster depends on the host: XNNPACK
beats TensorFlow's kernels on some CPUs and loses on others. Elsewhere ``auto``
is TensorFlow. Every TFLite model is checked against the Keras model on real
training images before it is used; when a conversion fails or the two
disagree, ``auto`` falls back to TensorFlow (and says why in the log), while an
explicit ``tflite`` fails the Trainer naming the setting. The explicit settings
measure nothing.

Only the cached inputs come from this engine. The trainable part trains in
TensorFlow, and the exported model is the Keras model in TensorFlow.
"""

from __future__ import annotations

import math
import os
import time
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

TIMED_BATCHES = 2
"""Batches `MeasuredEngine` times each engine on, after one warm-up batch each."""

Outputs = list[np.ndarray]
"""The frozen model's outputs for one batch, in `model.outputs` order."""
Engine = Callable[[np.ndarray], Outputs]
"""Runs the frozen model on a batch of images: `TFLiteModel`, `TensorFlowModel`."""


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



class TensorFlowModel:
    """A frozen Keras model as one traced TensorFlow function: numpy batches in, outputs out.

    The TensorFlow side of `MeasuredEngine`, called exactly as `TFLiteModel` is.
    """

    def __init__(self, model: tf.keras.Model) -> None:
        spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32, name="images")
        self._run = tf.function(
            lambda images: tuple(tf.nest.flatten(model(images, training=False))),
            input_signature=[spec], autograph=False,
        )

    def __call__(self, images: np.ndarray) -> Outputs:
        """The model's outputs for a batch of images."""
        return [np.asarray(output) for output in self._run(images)]


class MeasuredEngine:
    """The faster of several engines of the same model, timed on the first batches it runs.

    The first call runs every engine once (warm-up: tracing, allocation), the
    next `timed_batches` calls run and time each of them, in an order that
    alternates from one call to the next; until then it returns the outputs of
    the first engine given (the reference). From then on only the faster one
    runs. The extra cost is bounded: the other engines' runs over
    `1 + timed_batches` batches.

    Args:
        engines: Engine per name (a `trainer.config` feature engine), the
            reference first. The engines must compute the same function.
        timed_batches: Batches timed per engine after the warm-up.
    """

    def __init__(self, engines: dict[str, Engine], timed_batches: int = TIMED_BATCHES) -> None:
        self._engines = engines
        self._timed_batches = timed_batches
        self._seconds = dict.fromkeys(engines, 0.0)
        self._images = 0
        self._calls = 0
        self._last: np.ndarray | None = None
        self._chosen: str | None = None

    def __call__(self, images: np.ndarray) -> Outputs:
        """The model's outputs for a batch of images."""
        if self._chosen is not None:
            return self._engines[self._chosen](images)
        self._calls += 1
        self._last = images
        if self._calls == 1:
            outputs = {name: engine(images) for name, engine in self._engines.items()}
        else:
            outputs = self._timed(images)
            if self._calls > self._timed_batches:
                self._choose()
        return outputs[next(iter(self._engines))]

    @property
    def name(self) -> str:
        """The faster engine's name (timed now on the last batch if none was timed yet)."""
        if self._chosen is None:
            self._choose()
        return self._chosen

    @property
    def rates(self) -> dict[str, float]:
        """Images per second of each engine over the timed batches."""
        if self._chosen is None:
            self._choose()
        return {name: self._images / max(seconds, 1e-9)
                for name, seconds in self._seconds.items()}

    def _timed(self, images: np.ndarray) -> dict[str, Outputs]:
        names = list(self._engines)
        if self._calls % 2:
            names.reverse()
        outputs = {}
        for name in names:
            start = time.perf_counter()
            outputs[name] = self._engines[name](images)
            self._seconds[name] += time.perf_counter() - start
        self._images += len(images)
        return {name: outputs[name] for name in self._engines}

    def _choose(self) -> None:
        if not self._images:
            if self._last is None:
                raise FeatureEngineError("no batch was run to measure the feature engines on")
            self._timed(self._last)
        self._chosen = min(self._seconds, key=self._seconds.get)
        rates = self.rates
        logging.info("feature_engine auto: %s on %d images; using %s",
                     ", ".join(f"{name} {rate:.1f} images/s" for name, rate in rates.items()),
                     self._images, self._chosen)
