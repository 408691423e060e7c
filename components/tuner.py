"""Tuner: TFX's Tuner, searching head settings on the Embedder's vectors.

TFX's Tuner component and executor, with one more input: the Embedder's
`embeddings`, whose URI the executor hands `tuner_fn` (`trainer.tuning`) under
the reserved `custom_config` key `trainer.embeddings.URI_KEY`, as the Trainer's
executor does. Its `best_hyperparameters` output (KerasTuner's config of the
best trial, with the search's summary under `trainer.tuning.SEARCH_KEY`) goes
to the Trainer, which trains with those settings.
"""

from __future__ import annotations

import json
import os
from typing import Any

from tfx import types
from tfx.components.tuner import executor as tfx_tuner_executor
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import io_utils, json_utils

from components.embedder import EMBEDDINGS_KEY, Embeddings
from trainer import embeddings as embedding_format
from trainer import tuning

BEST_HYPERPARAMETERS_KEY = standard_component_specs.BEST_HYPERPARAMETERS_KEY
BEST_HYPERPARAMETERS_FILE = "best_hyperparameters.txt"
"""The output's one file, as TFX's Tuner names it (its Trainer reads the only file)."""


class TunerSpec(standard_component_specs.TunerSpec):
    """TFX's Tuner spec with the `embeddings` input."""

    INPUTS = {
        **standard_component_specs.TunerSpec.INPUTS,
        EMBEDDINGS_KEY: ChannelParameter(type=Embeddings),
    }


class Executor(base_executor.BaseExecutor):
    """TFX's Tuner search, given the embeddings' URI; the best settings with the search's record."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        custom_config = json.loads(exec_properties.get(
            standard_component_specs.CUSTOM_CONFIG_KEY) or "{}")
        custom_config[embedding_format.URI_KEY] = artifact_utils.get_single_uri(
            input_dict[EMBEDDINGS_KEY])
        properties = {**exec_properties,
                      standard_component_specs.CUSTOM_CONFIG_KEY: json.dumps(custom_config)}
        tuner = tfx_tuner_executor.search(
            input_dict, properties, self._get_tmp_dir(), print_tuning_summary=False)
        tfx_tuner_executor.write_best_hyperparameters(tuner, output_dict)
        best = {**tuner.get_best_hyperparameters()[0].get_config(),
                tuning.SEARCH_KEY: tuner.summary()}
        io_utils.write_string_file(os.path.join(
            artifact_utils.get_single_uri(output_dict[BEST_HYPERPARAMETERS_KEY]),
            BEST_HYPERPARAMETERS_FILE), json.dumps(best))


class Tuner(base_component.BaseComponent):
    """TFX's Tuner (`tuner_fn`), given the Embedder's output."""

    SPEC_CLASS = TunerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        *,
        tuner_fn: str,
        examples: types.BaseChannel,
        transform_graph: types.BaseChannel,
        schema: types.BaseChannel,
        embeddings: types.BaseChannel,
        train_args: trainer_pb2.TrainArgs,
        eval_args: trainer_pb2.EvalArgs,
        custom_config: dict[str, Any],
    ) -> None:
        """TFX Tuner's arguments as the pipeline uses them, and `embeddings` (required)."""
        spec = TunerSpec(
            examples=examples,
            transform_graph=transform_graph,
            schema=schema,
            embeddings=embeddings,
            tuner_fn=tuner_fn,
            train_args=train_args,
            eval_args=eval_args,
            custom_config=json_utils.dumps(custom_config),
            best_hyperparameters=types.Channel(type=standard_artifacts.HyperParameters),
            tuner_results=types.Channel(type=standard_artifacts.TunerResults),
        )
        super().__init__(spec=spec)
