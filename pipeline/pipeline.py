"""The Transferline pipeline: one definition for every runner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow_model_analysis as tfma
from google.protobuf import message
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from components import image_files
from components.image_folder_example_gen import (
    ImageFolderExampleGen,
    make_input_config,
    make_output_config,
)
from components.serving_pusher import ServingPusher
from pipeline.config import GateConfig, IngestConfig
from trainer import export, features
from trainer.config import TrainingConfig

TRANSFORM_MODULE = "trainer.transform.preprocessing_fn"
TRAINER_MODULE = "trainer.model.run_fn"
ACCURACY_METRIC = "sparse_categorical_accuracy"

# Node ids, stable across runs and runners.
EXAMPLE_GEN = "ImageFolderExampleGen"
STATISTICS_GEN = "StatisticsGen"
SCHEMA_GEN = "SchemaGen"
EXAMPLE_VALIDATOR = "ExampleValidator"
TRANSFORM = "Transform"
TRAINER = "Trainer"
BASELINE_RESOLVER = "LatestBlessedModelResolver"
EVALUATOR = "Evaluator"
PUSHER = "Pusher"
NODE_IDS = (
    EXAMPLE_GEN, STATISTICS_GEN, SCHEMA_GEN, EXAMPLE_VALIDATOR, TRANSFORM,
    TRAINER, BASELINE_RESOLVER, EVALUATOR, PUSHER,
)


def make_eval_config(gate: GateConfig) -> tfma.EvalConfig:
    """Accuracy with an absolute bound and a no-regression bound against the baseline."""
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name=export.SERVING_EXAMPLES,
                label_key=features.TRANSFORMED_LABEL_KEY,
                prediction_key=export.SCORES_OUTPUT,
                preprocessing_function_names=[export.TRANSFORM_FEATURES],
            )
        ],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(
                        class_name="SparseCategoricalAccuracy",
                        threshold=tfma.MetricThreshold(
                            value_threshold=tfma.GenericValueThreshold(
                                lower_bound={"value": gate.min_accuracy}
                            ),
                            change_threshold=tfma.GenericChangeThreshold(
                                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                absolute={"value": -gate.max_accuracy_drop - 1e-10},
                            ),
                        ),
                    )
                ]
            )
        ],
    )


def create_pipeline(
    *,
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    serving_model_dir: str,
    training: TrainingConfig = TrainingConfig(),
    ingest: IngestConfig = IngestConfig(),
    gate: GateConfig = GateConfig(),
    metadata_connection_config: metadata_store_pb2.ConnectionConfig | None = None,
    beam_pipeline_args: Sequence[str] = (),
    platform_configs: Mapping[str, message.Message] | None = None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline: image folder in, a blessed model pushed for TF Serving.

    Args:
        pipeline_name: Name recorded in ML Metadata.
        pipeline_root: Where artifacts are written (local path or object store).
        data_root: The image folder, one subfolder per class (or train/ and val/).
        serving_model_dir: Push destination, `<serving dir>/<model name>`;
            versions are written below it.
        training: Backbone, head and training settings.
        ingest: Ingestion settings.
        gate: Blessing thresholds.
        metadata_connection_config: ML Metadata store; None leaves it to the runner.
        beam_pipeline_args: Passed to every Beam-based component.
        platform_configs: Orchestrator resource requests by node id (for Kubeflow
            V2, a `PipelineContainerSpec.ResourceSpec`, e.g. GPUs for the Trainer).
        enable_cache: Reuse outputs of nodes whose inputs did not change.

    Returns:
        The TFX pipeline.
    """
    training.validate()
    ingest.validate()
    gate.validate()
    components = []

    # Read the image folder into tf.Examples, accounting for every file.
    input_config = make_input_config(data_root)
    example_gen = ImageFolderExampleGen(
        input_base=data_root,
        input_config=input_config,
        output_config=make_output_config(input_config, ingest.eval_percent),
        ingest_options=image_files.IngestOptions(max_side=ingest.max_side),
        min_images_per_class=ingest.min_images_per_class,
    ).with_id(EXAMPLE_GEN)
    components.append(example_gen)

    # Compute statistics, infer a schema, and check the examples against it.
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"]
    ).with_id(STATISTICS_GEN)
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True
    ).with_id(SCHEMA_GEN)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    ).with_id(EXAMPLE_VALIDATOR)
    components += [statistics_gen, schema_gen, example_validator]

    # Build the label vocabulary and the image preprocessing graph (not materialized).
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=TRANSFORM_MODULE,
        materialize=False,
        custom_config=training.to_dict(),
    ).with_id(TRANSFORM)
    components.append(transform)

    # Train a new head on the frozen pretrained backbone.
    trainer = tfx.components.Trainer(
        run_fn=TRAINER_MODULE,
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=training.to_dict(),
    ).with_id(TRAINER)
    components.append(trainer)

    # The last blessed model is the baseline the candidate must not regress from.
    baseline_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(BASELINE_RESOLVER)
    components.append(baseline_resolver)

    # Bless the candidate only if it clears the absolute and no-regression bounds.
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline_resolver.outputs["model"],
        eval_config=make_eval_config(gate),
        example_splits=["eval"],
    ).with_id(EVALUATOR)
    components.append(evaluator)

    # Push a blessed model, once, into TF Serving's <model>/<version>/ layout.
    pusher = ServingPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)
        ),
    ).with_id(PUSHER)
    components.append(pusher)

    for node_id, platform_config in (platform_configs or {}).items():
        node = next((c for c in components if c.id == node_id), None)
        if node is None:
            raise ValueError(f"platform_configs names unknown node {node_id!r}; nodes: {NODE_IDS}")
        node.with_platform_config(platform_config)

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args),
    )
