"""ServedModel: the version TF Serving serves, as a Model artifact, on every orchestrator.

The no-regression gate compares a candidate with the model being served, and the
Trainer warm-starts from it. Both read it from the serving model directory the
Pusher writes (`<serving dir>/<model name>`, local or object store), not from ML
Metadata lineage: a plain custom component runs everywhere, whereas open-source
Kubeflow Pipelines runs no resolver tasks.

The executor copies the newest complete version into its output's
`Format-Serving/` (so a concurrent prune cannot pull it away mid-evaluation, and
the Trainer's `fn_args.base_model` and the Evaluator find it where TFX looks), and
records on the artifact which version it was (`served_version`, `served_from`).
Versions carry the Trainer's warm-start checkpoint in `assets.extra/`
(`trainer.warm_start`), so the copy is also a warm-start source.

No version yet (the first run): the artifact records `served_version` -1 and
holds no model; the Trainer then starts from scratch and the `Evaluator` below
applies the absolute bounds only. For the `baseline` role a version the Evaluator
cannot score (an unreadable `saved_model.pb`, no `serving_examples` signature)
stops the run with one line naming it, rather than blessing without a comparison.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import saved_model_pb2
from tfx import types
from tfx.components.evaluator import executor as tfx_evaluator_executor
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, path_utils
from tfx.v1.components import Evaluator as TfxEvaluator

from components import serving_pusher
from trainer import export

SERVING_MODEL_DIR_KEY = "serving_model_dir"
ROLE_KEY = "role"
EXAMPLES_KEY = standard_component_specs.EXAMPLES_KEY
MODEL_KEY = standard_component_specs.MODEL_KEY
BASELINE_ROLE = "baseline"
WARM_START_ROLE = "warm_start"
ROLES = (BASELINE_ROLE, WARM_START_ROLE)
SERVED_VERSION_PROPERTY = "served_version"
SERVED_FROM_PROPERTY = "served_from"
NO_VERSION = -1
_REMEDY = "remove or repair that version, or compile with --no-baseline"
_COPY_ATTEMPTS = 3  # a version pruned while being copied: take the newest again


class UnscoreableServedModel(ValueError):
    """The served version cannot be the Evaluator's baseline (one line naming it)."""


def served_version(properties: Mapping[str, Any]) -> int | None:
    """The version a ServedModel artifact holds, from its custom properties; None for none."""
    version = properties.get(SERVED_VERSION_PROPERTY)
    return None if version is None or version == NO_VERSION else int(version)


def holds_no_version(artifact: types.Artifact) -> bool:
    """Whether a ServedModel artifact recorded that nothing was being served."""
    return (artifact.has_custom_property(SERVED_VERSION_PROPERTY)
            and artifact.get_int_custom_property(SERVED_VERSION_PROPERTY) == NO_VERSION)


def check_scoreable(version_dir: str) -> None:
    """Refuses a version the Evaluator cannot score: its SavedModel or signature.

    Raises:
        UnscoreableServedModel: `saved_model.pb` is unreadable, or has no
            `serving_examples` signature taking serialized examples.
    """
    path = os.path.join(version_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            saved_model.ParseFromString(f.read())
    except Exception as error:  # noqa: BLE001 (a DecodeError or an I/O error: both unreadable)
        raise UnscoreableServedModel(
            f"served version {version_dir} cannot be the baseline: unreadable {path} "
            f"({type(error).__name__}); {_REMEDY}"
        ) from None
    signatures = {
        name: signature
        for graph in saved_model.meta_graphs
        for name, signature in graph.signature_def.items()
        if not name.startswith("__")  # TF's own, e.g. __saved_model_init_op
    }
    signature = signatures.get(export.SERVING_EXAMPLES)
    if signature is None or export.EXAMPLES_INPUT not in signature.inputs:
        raise UnscoreableServedModel(
            f"served version {version_dir} cannot be the baseline: no "
            f"{export.SERVING_EXAMPLES!r} signature taking {export.EXAMPLES_INPUT!r} (it has "
            f"{sorted(signatures) or 'none'}); {_REMEDY}"
        )


class Executor(base_executor.BaseExecutor):
    """Copies the newest served version into the output Model, or records that there is none."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        model = artifact_utils.get_single_instance(output_dict[MODEL_KEY])
        base_directory = exec_properties[SERVING_MODEL_DIR_KEY]
        role = exec_properties[ROLE_KEY]
        for _ in range(_COPY_ATTEMPTS):
            versions = serving_pusher.list_versions(base_directory)
            if not versions:
                break
            version_dir = os.path.join(base_directory, str(versions[-1]))
            if role == BASELINE_ROLE:
                check_scoreable(version_dir)
            try:
                io_utils.copy_dir(version_dir, path_utils.serving_model_dir(model.uri))
            except tf.errors.NotFoundError:  # pruned meanwhile: a newer one exists
                io_utils.delete_dir(path_utils.serving_model_dir(model.uri))
                continue
            model.set_int_custom_property(SERVED_VERSION_PROPERTY, versions[-1])
            model.set_string_custom_property(SERVED_FROM_PROPERTY, version_dir)
            logging.info("ServedModel (%s): version %d from %s.", role, versions[-1], version_dir)
            return
        model.set_int_custom_property(SERVED_VERSION_PROPERTY, NO_VERSION)
        model.set_string_custom_property(SERVED_FROM_PROPERTY, "")
        logging.info(
            "ServedModel (%s): no model is being served under %s; %s.", role, base_directory,
            "the Evaluator applies the absolute bounds only" if role == BASELINE_ROLE
            else "the Trainer starts from scratch",
        )


class ServedModelSpec(types.ComponentSpec):
    """The serving model directory and the role in; the served version out."""

    PARAMETERS = {
        SERVING_MODEL_DIR_KEY: ExecutionParameter(type=str),
        ROLE_KEY: ExecutionParameter(type=str),
    }
    INPUTS = {
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
    }


class ServedModel(base_component.BaseComponent):
    """The newest complete version under a serving model directory, as a Model."""

    SPEC_CLASS = ServedModelSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        serving_model_dir: str,
        role: str,
        examples: types.BaseChannel | None = None,
    ) -> None:
        """Reads the served version for the Evaluator's baseline or the Trainer's warm start.

        Args:
            serving_model_dir: `<serving dir>/<model name>`, where the Pusher writes.
            role: "baseline" (refuses a version the Evaluator cannot score) or
                "warm_start".
            examples: The training examples, for the warm-start role: with them
                as input, the read is cached with the data, so a re-run of
                unchanged data hands the Trainer the same base model (the one
                served when the data arrived) and the Trainer stays cached.

        Raises:
            ValueError: An unknown role.
        """
        if role not in ROLES:
            raise ValueError(f"ServedModel role must be one of {ROLES}, got {role!r}")
        spec = ServedModelSpec(
            serving_model_dir=serving_model_dir,
            role=role,
            examples=examples,
            model=types.Channel(type=standard_artifacts.Model),
        )
        super().__init__(spec=spec)


class EvaluatorExecutor(tfx_evaluator_executor.Executor):
    """TFX's Evaluator; a ServedModel baseline holding no version is no baseline."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        baseline = input_dict.get(standard_component_specs.BASELINE_MODEL_KEY) or []
        if baseline and holds_no_version(baseline[0]):
            logging.info("Evaluator: no model is being served; absolute bounds only.")
            input_dict = {
                key: value for key, value in input_dict.items()
                if key != standard_component_specs.BASELINE_MODEL_KEY
            }
        super().Do(input_dict, output_dict, exec_properties)


class Evaluator(TfxEvaluator):
    """TFX's Evaluator, taking a ServedModel as its baseline (see `EvaluatorExecutor`)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(EvaluatorExecutor)
