"""ServingPusher: TFX's Pusher, made safe and idempotent for TF Serving.

* Only a blessed model is pushed (as with TFX's Pusher).
* A model already serving under the base directory is not pushed again: a
  re-run of an unchanged pipeline re-blesses the same model, and TF Serving
  should not see a second identical version.
* On a local filesystem a version directory appears only when complete: it is
  written beside its final place and renamed into it. Elsewhere `saved_model.pb`
  is copied last, which TF Serving waits for.
* Versions never collide: a new version is greater than every existing one.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils
from tfx.v1.components import Pusher

SOURCE_FILE = os.path.join("assets.extra", "transferline_source.json")
ALREADY_SERVING_PROPERTY = "already_serving_version"
_SAVED_MODEL_PB = "saved_model.pb"


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
        source = os.path.join(base_directory, str(version), SOURCE_FILE)
        if tf.io.gfile.exists(source):
            with tf.io.gfile.GFile(source) as f:
                if json.load(f).get("model_uri") == model_uri:
                    return version
    return None


def next_version(base_directory: str) -> int:
    """A Unix-time version, bumped past every existing version."""
    existing = list_versions(base_directory)
    return max(int(time.time()), existing[-1] + 1 if existing else 0)


def push_model(model_path: str, base_directory: str, version: int, model_uri: str) -> str:
    """Copies a SavedModel to `<base_directory>/<version>`, complete or not at all.

    Returns:
        The version directory written.
    """
    final_path = os.path.join(base_directory, str(version))
    local = "://" not in base_directory
    target = os.path.join(base_directory, f".{version}.incomplete") if local else final_path
    if local and tf.io.gfile.exists(target):
        tf.io.gfile.rmtree(target)
    io_utils.copy_dir(model_path, target, deny_regex_patterns=[r"saved_model\.pb"])
    source = os.path.join(target, SOURCE_FILE)
    tf.io.gfile.makedirs(os.path.dirname(source))
    with tf.io.gfile.GFile(source, "w") as f:
        json.dump({"model_uri": model_uri, "pushed_at": time.time()}, f)
    io_utils.copy_file(
        os.path.join(model_path, _SAVED_MODEL_PB), os.path.join(target, _SAVED_MODEL_PB)
    )
    if local:
        os.rename(target, final_path)
    return final_path


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
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        push_destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], push_destination
        )
        base_directory = push_destination.filesystem.base_directory
        serving = find_version_serving(base_directory, model.uri)
        if serving is not None:
            logging.info("Model %s already serving as version %d; not pushed.", model.uri, serving)
            self._MarkNotPushed(model_push)
            model_push.set_int_custom_property(ALREADY_SERVING_PROPERTY, serving)
            model_push.set_string_custom_property(
                "pushed_destination", os.path.join(base_directory, str(serving))
            )
            return
        version = next_version(base_directory)
        serving_path = push_model(self.GetModelPath(input_dict), base_directory, version, model.uri)
        io_utils.copy_dir(self.GetModelPath(input_dict), model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=str(version))
        logging.info("Model pushed to %s.", serving_path)


class ServingPusher(Pusher):
    """TFX Pusher with `Executor`'s safe, idempotent push."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
