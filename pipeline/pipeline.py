"""The Transferline pipeline: one definition for every runner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf import message
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.dsl.input_resolution import canned_resolver_functions
from tfx.types import standard_component_specs as keys

from components.config import GateConfig, IngestConfig
from components.data_gate import CHECKED_SCHEMA_KEY, DataGate
from components.embedder import EMBEDDINGS_KEY, Embedder, Trainer
from components.eval_config import make_eval_config
from components.image_folder import count_classes, detect_layout, has_spans
from components.image_folder_example_gen import (
    ImageFolderExampleGen,
    make_input_config,
    make_output_config,
    make_range_config,
)
from components.served_model import BASELINE_ROLE, WARM_START_ROLE, Evaluator, ServedModel
from components.serving_pusher import KEEP_VERSIONS_KEY, ServingPusher
from components.statistics import image_stats_options
from components.tuner import BEST_HYPERPARAMETERS_KEY, Tuner
from trainer import embeddings as trainer_embeddings
from trainer import features
from trainer.config import TrainingConfig

TRANSFORM_MODULE = "trainer.transform.preprocessing_fn"
TRAINER_MODULE = "trainer.model.run_fn"
TUNER_MODULE = "trainer.tuning.tuner_fn"

# Node ids, stable across runs and runners.
EXAMPLE_GEN = "ImageFolderExampleGen"
STATISTICS_GEN = "StatisticsGen"
SCHEMA_GEN = "SchemaGen"
EXAMPLE_VALIDATOR = "ExampleValidator"
DATA_GATE = "DataGate"
TRANSFORM = "Transform"
EMBEDDER = "Embedder"
TUNER = "Tuner"
TRAINER = "Trainer"
WARM_START_MODEL = "WarmStartModel"
SERVING_BASELINE = "ServingBaseline"
EVALUATOR = "Evaluator"
PUSHER = "Pusher"
NODE_IDS = (
    EXAMPLE_GEN, STATISTICS_GEN, SCHEMA_GEN, EXAMPLE_VALIDATOR, DATA_GATE, TRANSFORM, EMBEDDER,
    TUNER, WARM_START_MODEL, TRAINER, SERVING_BASELINE, EVALUATOR, PUSHER,
)
# Nodes that run on every run whatever the cache holds: the baseline is the
# version serving now, not the one a cached execution saw.
ALWAYS_RUN_IDS = (SERVING_BASELINE,)


def _every_output_of(node_id: str, output_key: str, artifact_type: type) -> tfx.dsl.Channel:
    """Every `output_key` artifact the node produced in any run, queried from ML Metadata.

    A plain Channel, not an upstream node's output: that would be this run's only.
    (TFX's span resolver ops need a `version` property, which ExampleStatistics lacks.)
    """
    return tfx.dsl.Channel(type=artifact_type, producer_component_id=node_id, output_key=output_key)


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
    layout: str | None = None,
    baseline: bool = True,
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
            V2, a `PipelineContainerSpec.ResourceSpec`, e.g. GPUs for the Trainer);
            one for a node these settings leave out is ignored.
        enable_cache: Reuse outputs of nodes whose inputs did not change.
        layout: The data folder's layout, one of components.image_folder.LAYOUTS
            (e.g. "classes", "presplit-test", "span-classes"); None lists
            `data_root` to find it, which an object store may not allow.
        baseline: Evaluate against the version being served (read from
            `serving_model_dir` by a ServedModel node on every run) and refuse a
            regression from it. False leaves the node out and keeps only the
            absolute bounds.

    Returns:
        The TFX pipeline.

    Raises:
        ValueError: A setting is impossible, e.g. a span asked of a layout without spans.
    """
    training.validate()
    ingest.validate()
    gate.validate()
    components = []

    # A given layout lists nothing; otherwise the folder is listed (for val/ or eval/ too).
    input_config = make_input_config(data_root, layout)
    spans = has_spans(layout or detect_layout(data_root)[0])
    if not spans and (ingest.span or ingest.span_window > 1):
        raise ValueError(
            f"span={ingest.span} and span_window={ingest.span_window} need span-<N> folders; "
            f"the data layout is {layout or detect_layout(data_root)[0]!r}"
        )

    # Read the image folder (the latest span, or the one asked) into tf.Examples,
    # accounting for every file.
    example_gen = ImageFolderExampleGen(
        input_base=data_root,
        input_config=input_config,
        output_config=make_output_config(input_config, ingest),
        ingest=ingest,
        range_config=make_range_config(ingest.span) if spans else None,
    ).with_id(EXAMPLE_GEN)
    components.append(example_gen)

    # Compute statistics, infer a schema, and check the examples against it.
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs[keys.EXAMPLES_KEY], stats_options=image_stats_options()
    ).with_id(STATISTICS_GEN)
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs[keys.STATISTICS_KEY], infer_feature_shape=True
    ).with_id(SCHEMA_GEN)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs[keys.STATISTICS_KEY],
        schema=schema_gen.outputs[keys.SCHEMA_KEY],
    ).with_id(EXAMPLE_VALIDATOR)
    components += [statistics_gen, schema_gen, example_validator]

    # Stop here, naming the anomalies, when the data is unfit: too few examples, a
    # class missing against the schema or the previous span, label drift from the
    # previous span (its statistics resolved from ML Metadata). Transform and the
    # Trainer read the schema the gate passes on, so nothing trains on unfit data.
    data_gate = DataGate(
        statistics=statistics_gen.outputs[keys.STATISTICS_KEY],
        schema=schema_gen.outputs[keys.SCHEMA_KEY],
        anomalies=example_validator.outputs[keys.ANOMALIES_KEY],
        previous_statistics=(
            _every_output_of(
                STATISTICS_GEN, keys.STATISTICS_KEY, tfx.types.standard_artifacts.ExampleStatistics
            )
            if spans else None
        ),
        ingest=ingest,
    ).with_id(DATA_GATE)
    components.append(data_gate)
    checked_schema = data_gate.outputs[CHECKED_SCHEMA_KEY]

    # With spans, Transform and the Trainer may read a rolling window of the last
    # spans ingested (TFX's rolling_range over every ExampleGen output in ML Metadata).
    training_examples = example_gen.outputs[keys.EXAMPLES_KEY]
    if spans and ingest.span_window > 1:
        training_examples = canned_resolver_functions.rolling_range(
            tfx.dsl.Channel(
                type=tfx.types.standard_artifacts.Examples,
                producer_component_id=EXAMPLE_GEN,
                output_key=keys.EXAMPLES_KEY,
            ),
            num_spans=ingest.span_window,
            min_spans=1,
        )

    # Build the label vocabulary and the image preprocessing graph (not materialized).
    transform = tfx.components.Transform(
        examples=training_examples,
        schema=checked_schema,
        preprocessing_fn=TRANSFORM_MODULE,
        materialize=False,
        disable_statistics=True,  # pre/post-transform stats would decode every image again
        # Only what preprocessing depends on: a new head or optimizer keeps Transform cached.
        custom_config=training.preprocessing_dict(),
    ).with_id(TRANSFORM)
    components.append(transform)

    # The frozen backbone's pooled output for every example, once, on Beam: given
    # only what the vectors depend on, it stays cached when only the head or the
    # optimizer changes, and the Trainer's head phase then runs no backbone.
    # Left out when the head cannot train on cached inputs (augmentation).
    embeddings = None
    if trainer_embeddings.cached_inputs_apply(training):
        embedder = Embedder(
            examples=training_examples,
            transform_graph=transform.outputs[keys.TRANSFORM_GRAPH_KEY],
            settings=trainer_embeddings.embedding_settings(training),
        ).with_id(EMBEDDER)
        components.append(embedder)
        embeddings = embedder.outputs[EMBEDDINGS_KEY]

    # With --tune, search the head's settings on those vectors (TFX's Tuner with
    # KerasTuner): no trial runs the backbone; the best settings go to the Trainer.
    best_hyperparameters = None
    if training.tuning.enabled:
        tuner = Tuner(
            tuner_fn=TUNER_MODULE,
            examples=training_examples,
            transform_graph=transform.outputs[keys.TRANSFORM_GRAPH_KEY],
            schema=checked_schema,
            embeddings=embeddings,
            train_args=tfx.proto.TrainArgs(splits=[features.TRAIN_SPLIT]),
            eval_args=tfx.proto.EvalArgs(splits=[features.EVAL_SPLIT]),
            custom_config=training.to_dict(),
        ).with_id(TUNER)
        components.append(tuner)
        best_hyperparameters = tuner.outputs[BEST_HYPERPARAMETERS_KEY]

    # The version served when this data arrived, to start training from: read with
    # the training examples as input, so it is cached with them (a re-run of unchanged
    # data hands the Trainer the same base model, and the Trainer stays cached).
    warm_start_model = None
    if training.warm_start:
        warm_start_source = ServedModel(
            serving_model_dir=serving_model_dir, role=WARM_START_ROLE,
            examples=training_examples,
        ).with_id(WARM_START_MODEL)
        components.append(warm_start_source)
        warm_start_model = warm_start_source.outputs[keys.MODEL_KEY]

    # Train a new head on the frozen pretrained backbone (from the base model's if it
    # fits), on the Embedder's vectors when there are any.
    trainer = Trainer(
        run_fn=TRAINER_MODULE,
        examples=training_examples,
        transform_graph=transform.outputs[keys.TRANSFORM_GRAPH_KEY],
        schema=checked_schema,
        train_args=tfx.proto.TrainArgs(splits=[features.TRAIN_SPLIT]),
        eval_args=tfx.proto.EvalArgs(splits=[features.EVAL_SPLIT]),
        custom_config=training.to_dict(),
        base_model=warm_start_model,
        embeddings=embeddings,
        hyperparameters=best_hyperparameters,
    ).with_id(TRAINER)
    components.append(trainer)

    # The version serving now is the baseline the candidate must not regress from:
    # read on every run (see ALWAYS_RUN_IDS), once the candidate is trained; with
    # none yet, absolute bounds only.
    baseline_model = None
    if baseline:
        serving_baseline = ServedModel(
            serving_model_dir=serving_model_dir, role=BASELINE_ROLE
        ).with_id(SERVING_BASELINE)
        serving_baseline.add_upstream_node(trainer)
        components.append(serving_baseline)
        baseline_model = serving_baseline.outputs[keys.MODEL_KEY]

    # Bless the candidate only if it clears the absolute and no-regression bounds.
    eval_config = make_eval_config(
        gate, num_classes=None if layout else count_classes(data_root, ingest.span),
        baseline=baseline,
    )
    evaluator = Evaluator(
        examples=example_gen.outputs[keys.EXAMPLES_KEY],
        model=trainer.outputs[keys.MODEL_KEY],
        baseline_model=baseline_model,
        schema=schema_gen.outputs[keys.SCHEMA_KEY],
        eval_config=eval_config,
        example_splits=[features.EVAL_SPLIT],
    ).with_id(EVALUATOR)
    components.append(evaluator)

    # Push a blessed model, once, into TF Serving's <model>/<version>/ layout, with
    # warm-up requests, a model card and models.config; keep the newest versions.
    pusher = ServingPusher(
        model=trainer.outputs[keys.MODEL_KEY],
        model_blessing=evaluator.outputs[keys.BLESSING_KEY],
        evaluation=evaluator.outputs[keys.EVALUATION_KEY],
        eval_config=eval_config,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)
        ),
        custom_config={KEEP_VERSIONS_KEY: gate.keep_versions},
    ).with_id(PUSHER)
    components.append(pusher)

    for node_id, platform_config in (platform_configs or {}).items():
        if node_id not in NODE_IDS:
            raise ValueError(f"platform_configs names unknown node {node_id!r}; nodes: {NODE_IDS}")
        for node in components:  # a node these settings leave out gets none
            if node.id == node_id:
                node.with_platform_config(platform_config)

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args),
    )
