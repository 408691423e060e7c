"""Embedder: the frozen backbone's pooled output for every example, as a Beam job.

The head phase trains on what the frozen backbone makes of each image. That
depends on the examples, the Transform graph, the backbone, its weights, the
cut, the image size and the head's pooling, and on nothing the head phase
changes; so it is computed once here, as a pipeline artifact ML Metadata caches.
A re-run with a new dropout or learning rate finds the Embedder cached and the
Trainer's head phase runs no backbone at all (`trainer.phases`).

The executor is a Beam job (TFX's `beam_pipeline_args`, so `--beam-arg` can
send it to Dataflow, Flink or Spark): the examples' TFRecords of every split
through Beam's `RunInference` with our own `ModelHandler` (Beam 2.59's
TensorFlow handler does not work with TF 2.16), in batches of at most
`MAX_BATCH_SIZE` (tfx#5777: an unbounded batch ran out of memory), so memory
stays flat whatever the number of examples. Beam loads the model through the
handler once per worker. Examples embedded are counted by the Beam counter
`Embedder/examples_embedded`.

The output `embeddings` (`Embeddings`, type `components.Embeddings`; see
`trainer.embeddings` for the format) holds `Split-<split>/` TFRecord (gzip)
files, one record per example.

`Trainer` below is TFX's Trainer with an optional `embeddings` input: its
executor hands the artifact's URI to `run_fn` under the reserved
`custom_config` key `trainer.embedding_format.URI_KEY`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
from absl import logging
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference import base as inference
from tfx import types
from tfx.components.trainer import executor as tfx_trainer_executor
from tfx.dsl.components.base import (
    base_beam_component,
    base_beam_executor,
    base_component,
    executor_spec,
)
from tfx.proto import trainer_pb2
from tfx.types import artifact, artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import json_utils

from trainer import embeddings as embedding_format
from trainer import progress_events

EMBEDDINGS_KEY = "embeddings"
EXAMPLES_KEY = standard_component_specs.EXAMPLES_KEY
TRANSFORM_GRAPH_KEY = standard_component_specs.TRANSFORM_GRAPH_KEY
MAX_BATCH_SIZE = 64
"""Examples per call of the backbone: bounded, so memory does not grow with the data."""
COUNTER_NAMESPACE = "Embedder"
EXAMPLES_EMBEDDED = "examples_embedded"
SPLIT_NAMES_PROPERTY = "split_names"
"""On the output: its splits, encoded as TFX encodes an Examples artifact's."""
_FILE_PREFIX = "embeddings"


class Embeddings(artifact.Artifact):
    """The frozen backbone's pooled output per example, by split (`trainer.embeddings`)."""

    # Kubeflow V2 imports a custom type by its name, `<module>.<class>` with one dot:
    # `components/__init__.py` gives this class under that name. No PROPERTIES: it
    # compiles a custom type only without them; the splits are a custom property.
    TYPE_NAME = "components.Embeddings"


class EmbeddingModelHandler(inference.ModelHandler[bytes, bytes, embedding_format.EmbeddingModel]):
    """Serialized raw tf.Examples in, serialized embedding tf.Examples out.

    Args:
        settings: `trainer.embedding_format.embedding_settings(...)`.
        transform_graph_uri: The Transform graph's URI.
        max_batch_size: The largest batch Beam hands `run_inference`.
    """

    def __init__(self, settings: Mapping[str, Any], transform_graph_uri: str,
                 max_batch_size: int = MAX_BATCH_SIZE) -> None:
        super().__init__()
        self._settings = dict(settings)
        self._transform_graph_uri = transform_graph_uri
        self._max_batch_size = max_batch_size

    def load_model(self) -> embedding_format.EmbeddingModel:
        config = embedding_format.config_from_settings(self._settings)
        return embedding_format.EmbeddingModel(config, self._transform_graph_uri)

    def run_inference(
        self, batch: Sequence[bytes], model: embedding_format.EmbeddingModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[bytes]:
        records = embedding_format.encode_records(model(batch))
        Metrics.counter(COUNTER_NAMESPACE, EXAMPLES_EMBEDDED).inc(len(records))
        return records

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._max_batch_size}

    def get_metrics_namespace(self) -> str:
        return COUNTER_NAMESPACE


def _split_index(keyed: tuple[int, bytes], _: int) -> int:
    return keyed[0]


def _example_files(examples: Sequence[types.Artifact], split: str) -> list[str]:
    return [os.path.join(uri, "*") for uri in artifact_utils.get_split_uris(examples, split)]


class Executor(base_beam_executor.BaseBeamExecutor):
    """Embeds every example of every split of the input examples."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        examples = input_dict[EXAMPLES_KEY]
        transform_graph_uri = artifact_utils.get_single_uri(input_dict[TRANSFORM_GRAPH_KEY])
        output = artifact_utils.get_single_instance(output_dict[EMBEDDINGS_KEY])
        splits = sorted({
            split for artifact_ in examples
            for split in artifact_utils.decode_split_names(artifact_.split_names)
        })
        settings = {key: exec_properties[key] for key in embedding_format.EMBEDDING_SETTINGS}
        handler = inference.KeyedModelHandler(
            EmbeddingModelHandler(settings, transform_graph_uri))
        with self._make_beam_pipeline() as pipeline:
            _embed_splits(pipeline, examples, splits, handler, output.uri)
        output.set_string_custom_property(
            SPLIT_NAMES_PROPERTY, artifact_utils.encode_split_names(splits))
        _report_count(pipeline.result)


def _embed_splits(
    pipeline: beam.Pipeline, examples: Sequence[types.Artifact], splits: Sequence[str],
    handler: inference.KeyedModelHandler, uri: str,
) -> None:
    """Every split's examples through one RunInference, each written to its `Split-<split>/`."""
    records = (
        [_read_split(pipeline, examples, split, index) for index, split in enumerate(splits)]
        | "AllSplits" >> beam.Flatten()
        | "Embed" >> inference.RunInference(handler)
    )
    by_split = records | "BySplit" >> beam.Partition(_split_index, len(splits))
    for index, split in enumerate(splits):
        _ = (
            by_split[index]
            | f"Record[{split}]" >> beam.Map(lambda keyed_record: keyed_record[1])
            | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                os.path.join(embedding_format.split_dir(uri, split), _FILE_PREFIX),
                file_name_suffix=".gz",
            )
        )


def _read_split(
    pipeline: beam.Pipeline, examples: Sequence[types.Artifact], split: str, index: int
) -> beam.PCollection:
    """The split's serialized examples, keyed by the split's index (for one RunInference)."""
    patterns = _example_files(examples, split)
    return (
        pipeline
        | f"Patterns[{split}]" >> beam.Create(patterns)
        | f"Read[{split}]" >> beam.io.ReadAllFromTFRecord()
        | f"Key[{split}]" >> beam.Map(lambda record, key=index: (key, record))
    )


def _report_count(result: beam.runners.runner.PipelineResult) -> None:
    """The examples embedded, from Beam's metrics of the finished pipeline."""
    try:
        query = result.metrics().query(
            MetricsFilter().with_namespace(COUNTER_NAMESPACE).with_name(EXAMPLES_EMBEDDED))
    except NotImplementedError:  # A runner that keeps no metrics.
        return
    embedded = sum(counter.committed or 0 for counter in query["counters"])
    progress_events.report(progress_events.Progress("embedded", embedded, unit="examples"))
    logging.info("Embedder: %d examples embedded.", embedded)


class EmbedderSpec(types.ComponentSpec):
    """The examples and the Transform graph in; their embeddings out."""

    PARAMETERS = {
        "backbone": ExecutionParameter(type=str),
        "weights": ExecutionParameter(type=str),
        "cut_layer": ExecutionParameter(type=str),
        "image_size": ExecutionParameter(type=int),
        "pooling": ExecutionParameter(type=str),
    }
    INPUTS = {
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        TRANSFORM_GRAPH_KEY: ChannelParameter(type=standard_artifacts.TransformGraph),
    }
    OUTPUTS = {
        EMBEDDINGS_KEY: ChannelParameter(type=Embeddings),
    }


class Embedder(base_beam_component.BaseBeamComponent):
    """The frozen backbone's pooled output for every example of every split."""

    SPEC_CLASS = EmbedderSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(
        self,
        examples: types.BaseChannel,
        transform_graph: types.BaseChannel,
        settings: Mapping[str, Any],
    ) -> None:
        """Embeds the examples the Trainer reads.

        Args:
            examples: The training examples (every split is embedded).
            transform_graph: Transform's graph (decoding, resizing, the label vocabulary).
            settings: `trainer.embedding_format.embedding_settings(config)`: only what
                the vectors depend on, so ML Metadata caches the node across
                head-only changes.
        """
        spec = EmbedderSpec(
            examples=examples,
            transform_graph=transform_graph,
            embeddings=types.Channel(type=Embeddings),
            **{key: settings[key] for key in embedding_format.EMBEDDING_SETTINGS},
        )
        super().__init__(spec=spec)


# ------------------------------------------------------------------- Trainer


class TrainerSpec(standard_component_specs.TrainerSpec):
    """TFX's Trainer spec with an optional `embeddings` input."""

    INPUTS = {
        **standard_component_specs.TrainerSpec.INPUTS,
        EMBEDDINGS_KEY: ChannelParameter(type=Embeddings, optional=True),
    }


class TrainerExecutor(tfx_trainer_executor.GenericExecutor):
    """TFX's generic Trainer executor; hands `run_fn` the embeddings' URI, if given.

    The URI goes into `fn_args.custom_config` under `trainer.embedding_format.URI_KEY`.
    """

    def _GetFnArgs(self, input_dict, output_dict, exec_properties):  # noqa: N802 (TFX API)
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        given = input_dict.get(EMBEDDINGS_KEY) or []
        if given:
            fn_args.custom_config = {
                **(fn_args.custom_config or {}),
                embedding_format.URI_KEY: artifact_utils.get_single_uri(given),
            }
        return fn_args


class Trainer(base_component.BaseComponent):
    """TFX's Trainer (generic executor, `run_fn`), optionally given the Embedder's output."""

    SPEC_CLASS = TrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(TrainerExecutor)

    def __init__(
        self,
        *,
        run_fn: str,
        examples: types.BaseChannel,
        transform_graph: types.BaseChannel,
        schema: types.BaseChannel,
        train_args: trainer_pb2.TrainArgs,
        eval_args: trainer_pb2.EvalArgs,
        custom_config: dict[str, Any],
        base_model: types.BaseChannel | None = None,
        embeddings: types.BaseChannel | None = None,
        hyperparameters: types.BaseChannel | None = None,
    ) -> None:
        """TFX Trainer's arguments as the pipeline uses them, and `embeddings`.

        Args:
            embeddings: The Embedder's output; with it the head phase trains on
                the vectors instead of running the backbone (when it trains on
                cached inputs at all, see `trainer.phases`).
            hyperparameters: The Tuner's best head settings, which replace the
                configured ones (`trainer.tuning`).
        """
        spec = TrainerSpec(
            examples=examples,
            transform_graph=transform_graph,
            schema=schema,
            base_model=base_model,
            embeddings=embeddings,
            hyperparameters=hyperparameters,
            train_args=train_args,
            eval_args=eval_args,
            run_fn=run_fn,
            custom_config=json_utils.dumps(custom_config),
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun),
        )
        super().__init__(spec=spec)
