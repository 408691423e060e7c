"""Where training runs: devices, distribution strategy and numeric precision.

* Several GPUs: `tf.distribute.MirroredStrategy` across them (the batch size is
  the global batch, split between replicas); one GPU or none: the default strategy.
* Mixed precision (float16 compute, float32 variables) when a GPU is present, by
  default. The exported model is rebuilt in float32, so it serves anywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import tensorflow as tf

MIXED_POLICY = "mixed_float16"
FLOAT32_POLICY = "float32"


def make_strategy(devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """MirroredStrategy over `devices` when there are several; else the default strategy.

    Args:
        devices: Logical device names (e.g. "/gpu:0"); None takes every GPU.
    """
    if devices is None:
        devices = [device.name for device in tf.config.list_logical_devices("GPU")]
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy(list(devices))
    return tf.distribute.get_strategy()


def use_mixed_precision(mode: str) -> bool:
    """Whether `mode` ("auto", "on" or "off") means float16 compute on this machine."""
    if mode == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return mode == "on"


@contextlib.contextmanager
def precision_policy(mixed: bool) -> Iterator[None]:
    """Keras models built inside compute in float16 when `mixed`; the previous
    global policy is back afterwards."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(MIXED_POLICY if mixed else FLOAT32_POLICY)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
