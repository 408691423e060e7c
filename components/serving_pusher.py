"""ServingPusher: TFX's Pusher, made safe and idempotent for TF Serving.

* Only a blessed model is pushed (as with TFX's Pusher).
* A model already serving under the base directory is not pushed again: a
  re-run of an unchanged pipeline re-blesses the same model, and TF Serving
  should not see a second identical version.
* On a local filesystem a version directory appears only when complete: it is
  written beside its final place under a hidden, non-numeric name (which TF
  Serving ignores) and renamed into place. Elsewhere `saved_model.pb` is copied
  last, which TF Serving waits for. A push that fails (a full disk, a vanished
  source) removes its partial copy and re-raises the error.
* Version numbers are never reused, even after pruning, and a new version lands
  above every version that exists or existed, so TF Serving, which serves the
  highest complete version, serves it. The model directory keeps the highest
  number ever taken in `.version-high-water`. Locally the number is taken, and
  the copy renamed into place, while holding an exclusive `flock` on that file
  (the kernel releases it if the pusher dies), so concurrent pushes land in
  the order of their numbers. An object store has no lock and no atomic
  create: the number is taken when the push starts, above the mark and every
  name present, by creating its directory; pushes from one pipeline at a time
  are safe, but two pushers racing into one object-store model directory can
  pick the same number, and a slow push can land below a faster later one.
* Each version carries TF Serving warm-up requests
  (`assets.extra/tf_serving_warmup_requests`: a batch of 1 and of 32 images for
  `serving_default`), so the first real request does not pay for lazy
  initialisation.
* Only the newest `keep_versions` versions stay (custom_config
  ``{"keep_versions": K}``); the one just pushed is never deleted. A deleted
  version is renamed out of TF Serving's sight before it is removed. A version
  or file that a concurrent prune removed first is not an error.
* `<serving dir>/models.config` (TF Serving's `--model_config_file`, a
  ModelServerConfig text proto) lists every model under the serving directory.
* Each version carries its model card, `model_card.md` (see
  `components.model_card`), written while the version is still out of TF
  Serving's sight: the model, its classes and training settings (from the
  model's `assets.extra/training.json`), and, given the Evaluator's
  `evaluation` output and the EvalConfig it was given, its eval metrics and
  the gate checks (`components.tfma_results`). TF
  Serving loads only the SavedModel files and ignores the card (and a TFLite
  model in `assets.extra/`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
from absl import logging
from google.protobuf import text_format
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, json_utils, proto_utils
from tfx.v1.components import Pusher

from components import model_card, tfma_results
from components.config import GateConfig
from trainer import export

SOURCE_FILE = os.path.join("assets.extra", "transferline_source.json")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MODELS_CONFIG_FILE = "models.config"
MODEL_CARD_FILE = model_card.VERSION_CARD_FILE
EVALUATION_KEY = standard_component_specs.EVALUATION_KEY
EVAL_CONFIG_KEY = standard_component_specs.EVAL_CONFIG_KEY
ALREADY_SERVING_PROPERTY = "already_serving_version"
PUSHED_PROPERTY = "pushed"  # TFX Pusher's PushedModel custom properties
PUSHED_DESTINATION_PROPERTY = "pushed_destination"
KEEP_VERSIONS_KEY = "keep_versions"
WARMUP_BATCH_SIZES = (1, 32)
STALE_INCOMPLETE_SECONDS = 24 * 3600
_SAVED_MODEL_PB = "saved_model.pb"
_INCOMPLETE = ".incomplete-"
_DELETING = ".deleting-"
HIGH_WATER_FILE = ".version-high-water"
_HIGH_WATER_WIDTH = 20  # digits: the mark is rewritten in place, always at full length


def _is_local(path: str) -> bool:
    return "://" not in path


def list_versions(base_directory: str) -> list[int]:
    """Complete version directories under `base_directory`, oldest first."""
    if not tf.io.gfile.isdir(base_directory):
        return []
    versions = []
    for name in tf.io.gfile.listdir(base_directory):
        name = name.rstrip("/")
        if name.isdigit() and tf.io.gfile.exists(
            os.path.join(base_directory, name, _SAVED_MODEL_PB)
        ):
            versions.append(int(name))
    return sorted(versions)


def find_version_serving(base_directory: str, model_uri: str) -> int | None:
    """The version under `base_directory` that was pushed from `model_uri`, if any."""
    for version in list_versions(base_directory):
        if read_source(os.path.join(base_directory, str(version))).get("model_uri") == model_uri:
            return version
    return None


def next_version(base_directory: str) -> int:
    """A Unix-time version, bumped past every version that exists or existed (complete or not).

    Locally the push takes its final number when it lands (see `push_model`);
    this is the lowest it asks for.
    """
    return max(int(time.time()), _lowest_free(base_directory, read_high_water(base_directory)))


def read_high_water(base_directory: str) -> int:
    """The highest version number ever taken under `base_directory` (0 before the first)."""
    try:
        with tf.io.gfile.GFile(os.path.join(base_directory, HIGH_WATER_FILE), "rb") as f:
            return _parse_high_water(f.read())
    except tf.errors.NotFoundError:
        return 0


def _parse_high_water(content: bytes) -> int:
    text = content.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else 0  # empty: created, not yet written


def _format_high_water(version: int) -> bytes:
    return f"{version:0{_HIGH_WATER_WIDTH}d}\n".encode("ascii")


def _lowest_free(base_directory: str, high_water: int) -> int:
    """One above the high-water mark and every numeric name under `base_directory`."""
    names = []
    if tf.io.gfile.isdir(base_directory):
        names = [
            int(name.rstrip("/"))
            for name in tf.io.gfile.listdir(base_directory)
            if name.rstrip("/").isdigit()
        ]
    return max([high_water, *names]) + 1


def warmup_requests(model_name: str, batch_sizes: tuple[int, ...] = WARMUP_BATCH_SIZES) -> list:
    """PredictionLogs TF Serving replays at load: `serving_default` on small JPEGs."""
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], ramp[::-1, None]), -1)
    image = tf.io.encode_jpeg(pixels).numpy()
    logs = []
    for batch_size in batch_sizes:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(
                name=model_name, signature_name=export.SERVING_DEFAULT
            )
        )
        request.inputs[export.IMAGE_BYTES_INPUT].CopyFrom(
            tf.make_tensor_proto([image] * batch_size, dtype=tf.string)
        )
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    return logs


def write_warmup_requests(version_dir: str, model_name: str) -> str:
    """Writes `assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog)."""
    path = os.path.join(version_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_requests(model_name):
            writer.write(log.SerializeToString())
    return path


def push_model(
    model_path: str,
    base_directory: str,
    version: int,
    model_uri: str,
    card: model_card.ModelCardFacts | None = None,
    pushed_at: float | None = None,
) -> str:
    """Copies a SavedModel to `<base_directory>/<version>`, complete or not at all.

    The version lands above every version that exists or existed: if `version`
    is not, the lowest number that is is used. A push that fails removes its
    partial copy and re-raises the error.

    Args:
        model_path: The SavedModel to push.
        base_directory: `<serving dir>/<model name>`.
        version: The lowest version to push as (see `next_version`).
        model_uri: The Model artifact, recorded to recognise a re-push.
        card: The version's model card; its version, serving path and push
            time are set to where and when the version lands. None writes no card.
        pushed_at: The push time (seconds since the epoch); default now.

    Returns:
        The version directory written.
    """
    model_name = os.path.basename(base_directory.rstrip("/"))
    pushed_at = time.time() if pushed_at is None else pushed_at
    if card is not None:
        card = dataclasses.replace(card, pushed_at=model_card.format_utc(pushed_at))
    local = _is_local(base_directory)
    if local:
        target = os.path.join(base_directory, f"{_INCOMPLETE}{uuid.uuid4().hex[:8]}")
    else:
        version = _take_number_in_object_store(base_directory, version)
        target = os.path.join(base_directory, str(version))
    try:
        io_utils.copy_dir(model_path, target, deny_regex_patterns=[r"saved_model\.pb"])
        _write_source(target, model_uri, pushed_at)
        write_warmup_requests(target, model_name)
        if not local:
            _write_card(card, target, version, target)
        io_utils.copy_file(
            os.path.join(model_path, _SAVED_MODEL_PB), os.path.join(target, _SAVED_MODEL_PB)
        )
        return _land(target, base_directory, version, card) if local else target
    except BaseException:
        _discard(target)
        raise


def _write_source(version_dir: str, model_uri: str, pushed_at: float) -> None:
    source = os.path.join(version_dir, SOURCE_FILE)
    tf.io.gfile.makedirs(os.path.dirname(source))
    with tf.io.gfile.GFile(source, "w") as f:
        json.dump({"model_uri": model_uri, "pushed_at": pushed_at}, f)


@contextlib.contextmanager
def _high_water_lock(base_directory: str) -> Iterator[int]:
    """The open high-water file of a local model directory, under an exclusive `flock`."""
    descriptor = os.open(os.path.join(base_directory, HIGH_WATER_FILE), os.O_RDWR | os.O_CREAT,
                         0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield descriptor
    finally:
        os.close(descriptor)  # releases the lock


def _land(incomplete: str, base_directory: str, version: int,
          card: model_card.ModelCardFacts | None) -> str:
    """Renames a complete local copy into place under a number above every version."""
    with _high_water_lock(base_directory) as mark:
        high_water = _parse_high_water(os.pread(mark, 2 * _HIGH_WATER_WIDTH, 0))
        version = max(version, _lowest_free(base_directory, high_water))
        os.pwrite(mark, _format_high_water(version), 0)  # taken, even if the rename fails
        os.fsync(mark)
        final_path = os.path.join(base_directory, str(version))
        _write_card(card, incomplete, version, final_path)
        os.rename(incomplete, final_path)
    return final_path


def _take_number_in_object_store(base_directory: str, version: int) -> int:
    """Takes a number above every version by creating its directory; records the mark.

    Not atomic: gfile has no exclusive create (see the module docstring).
    """
    version = max(version, _lowest_free(base_directory, read_high_water(base_directory)))
    tf.io.gfile.makedirs(os.path.join(base_directory, str(version)))
    with tf.io.gfile.GFile(os.path.join(base_directory, HIGH_WATER_FILE), "wb") as f:
        f.write(_format_high_water(version))
    return version


def _discard(path: str) -> None:
    """Removes a failed push's partial copy; failing to is logged, not raised over the cause."""
    try:
        _remove_tree(path)
    except Exception as error:  # the push's own error matters more
        logging.warning("Could not remove the partial push %s: %s", path, error)


def _write_card(
    card: model_card.ModelCardFacts | None, directory: str, version: int, serving_path: str
) -> None:
    if card is not None:
        card = dataclasses.replace(card, version=str(version), serving_path=serving_path)
        model_card.write_model_card(card, directory, MODEL_CARD_FILE)


def read_source(version_dir: str) -> dict[str, Any]:
    """What the push recorded in the version: `model_uri` and `pushed_at` (epoch seconds).

    Empty if nothing was recorded, or the version was pruned meanwhile.
    """
    try:
        with tf.io.gfile.GFile(os.path.join(version_dir, SOURCE_FILE)) as f:
            return json.load(f)
    except tf.errors.NotFoundError:
        return {}


def pushed_now(pushed_model: Mapping[str, Any]) -> bool:
    """Whether the push with these PushedModel properties wrote a new version."""
    return pushed_model.get(PUSHED_PROPERTY) == 1


def serving_version_dir(pushed_model: Mapping[str, Any]) -> str | None:
    """The version directory serving the pushed model, written now or already serving."""
    if pushed_now(pushed_model) or pushed_model.get(ALREADY_SERVING_PROPERTY) is not None:
        return pushed_model.get(PUSHED_DESTINATION_PROPERTY)
    return None


def blessing_facts(blessing: Mapping[str, Any]) -> tuple[bool | None, str | None]:
    """(blessed, baseline model URI) from a ModelBlessing's custom properties."""
    blessed = blessing.get(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY)
    baseline = blessing.get(evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY)
    return (None if blessed is None else bool(blessed)), (baseline or None)


def prune_versions(base_directory: str, keep: int, protect: int | None = None) -> list[int]:
    """Deletes all but the newest `keep` versions (never `protect`); returns those it deleted.

    A version is first made invisible to TF Serving (renamed to a hidden name
    locally; `saved_model.pb` removed first elsewhere), then removed. A version
    a concurrent prune deletes first is left to it.
    """
    versions = list_versions(base_directory)
    doomed = [v for v in versions[: max(len(versions) - keep, 0)] if v != protect]
    deleted = [version for version in doomed if _delete_version(base_directory, version)]
    if _is_local(base_directory):
        _remove_stale_leftovers(base_directory)
    return deleted


def _delete_version(base_directory: str, version: int) -> bool:
    """Hides a version from TF Serving and removes it; False if a concurrent prune took it."""
    path = os.path.join(base_directory, str(version))
    try:
        if _is_local(base_directory):
            hidden = os.path.join(base_directory, f".{version}{_DELETING}{uuid.uuid4().hex[:8]}")
            os.rename(path, hidden)
            path = hidden
        else:
            tf.io.gfile.remove(os.path.join(path, _SAVED_MODEL_PB))
    except (FileNotFoundError, tf.errors.NotFoundError):
        return False
    _remove_tree(path)
    return True


def _remove_tree(path: str) -> None:
    """Removes a directory tree; what a concurrent removal deletes first is not an error.

    In an object store `saved_model.pb` goes first, so TF Serving never loads a
    half-removed version.
    """
    if _is_local(path):
        shutil.rmtree(path, onerror=_unless_vanished)
        return
    for remove, target in ((tf.io.gfile.remove, os.path.join(path, _SAVED_MODEL_PB)),
                           (tf.io.gfile.rmtree, path)):
        try:
            remove(target)
        except tf.errors.NotFoundError:
            pass


def _unless_vanished(function: Any, path: str, exc_info: Any) -> None:
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


def _remove_stale_leftovers(base_directory: str) -> None:
    """Removes hidden directories of pushes and prunes interrupted over a day ago."""
    now = time.time()
    for name in os.listdir(base_directory):
        path = os.path.join(base_directory, name)
        if name.startswith(".") and (_INCOMPLETE in name or _DELETING in name):
            try:
                age = now - os.path.getmtime(path)
            except FileNotFoundError:  # removed by a concurrent prune
                continue
            if age > STALE_INCOMPLETE_SECONDS:
                _remove_tree(path)


def models_config(serving_dir: str) -> model_server_config_pb2.ModelServerConfig:
    """TF Serving's config listing every model directory with a version under `serving_dir`."""
    config = model_server_config_pb2.ModelServerConfig()
    names = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(serving_dir))
    for name in names:
        base_path = os.path.join(serving_dir, name)
        if not name.startswith(".") and list_versions(base_path):
            model = config.model_config_list.config.add()
            model.name = name
            model.base_path = os.path.abspath(base_path) if _is_local(base_path) else base_path
            model.model_platform = "tensorflow"
    return config


def write_models_config(serving_dir: str) -> str:
    """Writes `<serving_dir>/models.config` for `tensorflow_model_server --model_config_file`."""
    path = os.path.join(serving_dir, MODELS_CONFIG_FILE)
    text = text_format.MessageToString(models_config(serving_dir))
    if _is_local(serving_dir):
        temporary = f"{path}{_INCOMPLETE}{uuid.uuid4().hex[:8]}"
        with open(temporary, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    else:
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(text)
    return path


def keep_versions_from(exec_properties: dict[str, Any]) -> int:
    """`keep_versions` from the Pusher's custom_config (default `GateConfig`'s).

    Raises:
        ValueError: It is not a positive integer.
    """
    custom_config = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or {}
    if isinstance(custom_config, str):
        custom_config = json_utils.loads(custom_config) or {}
    keep = custom_config.get(KEEP_VERSIONS_KEY, GateConfig.keep_versions)
    if not isinstance(keep, int) or keep < 1:
        raise ValueError(f"{KEEP_VERSIONS_KEY} must be an integer >= 1, got {keep!r}")
    return keep


class Executor(tfx_pusher_executor.Executor):
    """Pushes a blessed model once, atomically, under a fresh version."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY]
        )
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        keep = keep_versions_from(exec_properties)
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        push_destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], push_destination
        )
        base_directory = push_destination.filesystem.base_directory
        serving_dir = os.path.dirname(base_directory.rstrip("/"))
        serving = find_version_serving(base_directory, model.uri)
        if serving is not None:
            logging.info("Model %s already serving as version %d; not pushed.", model.uri, serving)
            self._MarkNotPushed(model_push)
            model_push.set_int_custom_property(ALREADY_SERVING_PROPERTY, serving)
            model_push.set_string_custom_property(
                PUSHED_DESTINATION_PROPERTY, os.path.join(base_directory, str(serving))
            )
            write_models_config(serving_dir)
            return
        model_path = self.GetModelPath(input_dict)
        card = self._model_card(input_dict, exec_properties, model_path, model.uri,
                                base_directory)
        serving_path = push_model(
            model_path, base_directory, next_version(base_directory), model.uri, card
        )
        version = int(os.path.basename(serving_path))
        io_utils.copy_dir(model_path, model_push.uri)
        deleted = prune_versions(base_directory, keep, protect=version)
        write_models_config(serving_dir)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=str(version))
        logging.info("Model pushed to %s; older versions deleted: %s.", serving_path, deleted)


    def _model_card(
        self,
        input_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
        model_path: str,
        model_uri: str,
        base_directory: str,
    ) -> model_card.ModelCardFacts:
        """The card of the version about to be pushed (its version set by `push_model`)."""
        evaluation_artifacts = input_dict.get(EVALUATION_KEY)
        evaluation = None
        if evaluation_artifacts:
            try:
                classes = export.read_class_names(model_path)
            except FileNotFoundError:  # a SavedModel not exported by trainer.export
                classes = []
            evaluation = tfma_results.read_evaluation(
                artifact_utils.get_single_uri(evaluation_artifacts), classes,
                exec_properties.get(EVAL_CONFIG_KEY),
            )
        blessing = input_dict.get(standard_component_specs.MODEL_BLESSING_KEY)
        blessed, baseline = blessing_facts(
            {name: blessing[0].get_custom_property(name)
             for name in blessing[0].mlmd_artifact.custom_properties} if blessing else {}
        )
        return model_card.version_facts(
            model_path=model_path,
            model_uri=model_uri,
            serving_path=os.path.join(base_directory, "0"),  # the version: set by push_model
            pushed_at=None,
            evaluation=evaluation,
            blessed=blessed,
            baseline_model=baseline,
            pipeline_run=(self._context.pipeline_run_id or "") if self._context else "",
        )


class ServingPusherSpec(standard_component_specs.PusherSpec):
    """TFX Pusher's spec, plus the Evaluator's `evaluation` and EvalConfig for the model card."""

    INPUTS = {
        **standard_component_specs.PusherSpec.INPUTS,
        EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation, optional=True),
    }
    PARAMETERS = {
        **standard_component_specs.PusherSpec.PARAMETERS,
        EVAL_CONFIG_KEY: ExecutionParameter(type=tfma.EvalConfig, optional=True),
    }


class ServingPusher(Pusher):
    """TFX Pusher with `Executor`'s safe, idempotent push and a model card per version."""

    SPEC_CLASS = ServingPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        model_blessing: types.BaseChannel,
        push_destination: pusher_pb2.PushDestination,
        custom_config: dict[str, Any] | None = None,
        evaluation: types.BaseChannel | None = None,
        eval_config: tfma.EvalConfig | None = None,
    ) -> None:
        """Pushes `model` when `model_blessing` blesses it.

        Args:
            model: The Trainer's model.
            model_blessing: The Evaluator's blessing; required, so that nothing
                is pushed unconditionally.
            push_destination: Where versions go (a filesystem base directory).
            custom_config: ``{"keep_versions": K}``.
            evaluation: The Evaluator's evaluation, for the model card's metrics.
            eval_config: The EvalConfig the Evaluator was given, for the card's
                gate (TFX records it without change thresholds when there is no
                baseline; the card still lists them, as not applied).
        """
        spec = ServingPusherSpec(
            model=model,
            model_blessing=model_blessing,
            push_destination=push_destination,
            custom_config=json_utils.dumps(custom_config),
            evaluation=evaluation,
            eval_config=eval_config,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
        )
        base_component.BaseComponent.__init__(self, spec=spec)
