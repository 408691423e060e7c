"""Where training runs: devices, distribution strategy and numeric precision.

* A cluster: when ``TF_CONFIG`` (set by TFX's cloud trainers, Kubeflow's
  TFJob/training operator and Vertex AI) names more than one worker,
  `tf.distribute.MultiWorkerMirroredStrategy` across them. Every worker runs the
  same `run_fn`; only the chief writes the model (see `for_this_worker`).
* Several local GPUs: `tf.distribute.MirroredStrategy` across them (the batch
  size is the global batch, split between replicas).
* One GPU or none: the default strategy.
* Mixed precision (float16 compute, float32 variables) when a GPU is present, by
  default. The exported model is rebuilt in float32, so it serves anywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow as tf

MIXED_POLICY = "mixed_float16"
FLOAT32_POLICY = "float32"
TF_CONFIG_ENV = "TF_CONFIG"

MULTI_WORKER = "multi_worker"
MIRRORED = "mirrored"
DEFAULT = "default"

_WORKER_TASK_TYPES = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """What TF_CONFIG says about the cluster and this process's place in it.

    Attributes:
        workers: Training tasks (the chief and the workers), 0 without TF_CONFIG.
        task_type: This process's task type ("chief", "worker", ...), or None.
        task_index: Its index among tasks of that type.
        has_chief: Whether the cluster names a separate chief task.
    """

    workers: int = 0
    task_type: str | None = None
    task_index: int = 0
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the outputs: the chief, else worker 0."""
        if self.task_type in (None, "chief"):
            return True
        return self.task_type == "worker" and self.task_index == 0 and not self.has_chief


def parse_tf_config(value: str | None) -> ClusterSpec:
    """Reads a TF_CONFIG value: ``{"cluster": {"worker": [...]}, "task": {...}}``.

    Args:
        value: The variable's value; None or empty means no cluster.

    Raises:
        ValueError: The value is not JSON, its `cluster` or `task` has the wrong
            shape, or it names parameter servers (not supported); the message
            names TF_CONFIG.
    """
    if not value or not value.strip():
        return ClusterSpec()
    try:
        document = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"{TF_CONFIG_ENV} is not valid JSON ({error.msg} at character "
                         f"{error.pos}): {value[:200]!r}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{TF_CONFIG_ENV} must be a JSON object with 'cluster' and 'task', "
                         f"got {value[:200]!r}")
    cluster = document.get("cluster") or {}
    task = document.get("task") or {}
    if not isinstance(cluster, dict) or not all(
            isinstance(addresses, list) for addresses in cluster.values()):
        raise ValueError(f"{TF_CONFIG_ENV} 'cluster' must map task types to lists of "
                         f"host:port addresses, got {cluster!r}")
    if not isinstance(task, dict):
        raise ValueError(f"{TF_CONFIG_ENV} 'task' must be an object like "
                         f'{{"type": "worker", "index": 0}}, got {task!r}')
    if cluster.get("ps"):
        raise ValueError(f"{TF_CONFIG_ENV} names parameter servers ('ps'); training runs "
                         "with MultiWorkerMirroredStrategy, whose cluster is a chief and workers")
    index = task.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"{TF_CONFIG_ENV} task index must be a whole number >= 0, got {index!r}")
    workers = sum(len(cluster.get(kind, [])) for kind in _WORKER_TASK_TYPES)
    task_type = task.get("type")
    if workers and task_type not in (*cluster, None):
        raise ValueError(f"{TF_CONFIG_ENV} task type {task_type!r} is not in the cluster "
                         f"{sorted(cluster)}")
    return ClusterSpec(workers=workers, task_type=task_type, task_index=index,
                       has_chief=bool(cluster.get("chief")))


def choose_strategy(cluster: ClusterSpec, local_devices: int) -> str:
    """MULTI_WORKER for a cluster of several workers, MIRRORED for several local
    devices, DEFAULT otherwise."""
    if cluster.workers > 1:
        return MULTI_WORKER
    if local_devices > 1:
        return MIRRORED
    return DEFAULT


def make_strategy(
    devices: Sequence[str] | None = None, tf_config: str | None = None
) -> tf.distribute.Strategy:
    """The strategy `choose_strategy` picks for this process.

    Args:
        devices: Local logical device names (e.g. "/gpu:0"); None takes every GPU.
        tf_config: A TF_CONFIG value; None reads the environment variable.

    Raises:
        ValueError: TF_CONFIG is malformed (see `parse_tf_config`).
    """
    if tf_config is None:
        tf_config = os.environ.get(TF_CONFIG_ENV)
    cluster = parse_tf_config(tf_config)
    if devices is None:
        devices = [device.name for device in tf.config.list_logical_devices("GPU")]
    kind = choose_strategy(cluster, len(devices))
    if kind == MULTI_WORKER:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=_resolver_for(tf_config))
    if kind == MIRRORED:
        return tf.distribute.MirroredStrategy(list(devices))
    return tf.distribute.get_strategy()


def _resolver_for(tf_config: str) -> tf.distribute.cluster_resolver.ClusterResolver:
    """The cluster a (valid) TF_CONFIG value describes, for the strategy."""
    document = json.loads(tf_config)
    task = document.get("task") or {}
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(document["cluster"]), task_type=task.get("type"),
        task_id=task.get("index", 0), rpc_layer="grpc")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes outputs under `strategy` (always, but for
    non-chief workers of a MultiWorkerMirroredStrategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    return ClusterSpec(
        task_type=resolver.task_type,
        task_index=resolver.task_id or 0,
        has_chief="chief" in resolver.cluster_spec().as_dict(),
    ).is_chief


def for_this_worker(fn_args: Any, strategy: tf.distribute.Strategy) -> Any:
    """`fn_args` (TFX's attrs FnArgs) as is on the chief; on other workers, with
    the model and run directories moved to a private temporary folder.

    Every worker of a MultiWorkerMirroredStrategy runs the same code, saving
    included, but only the chief's files are the Trainer's outputs.
    """
    if is_chief(strategy):
        return fn_args
    import attr

    scratch = tempfile.mkdtemp(prefix="transferline_worker_")
    return attr.evolve(fn_args, serving_model_dir=os.path.join(scratch, "Format-Serving"),
                       model_run_dir=os.path.join(scratch, "model_run"))


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
