"""The Transferline pipeline: one definition for every runner."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import tensorflow_model_analysis as tfma
from google.protobuf import message
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.dsl.input_resolution import canned_resolver_functions

from components import image_files
from components.config import GateConfig, IngestConfig
from components.data_gate import CHECKED_SCHEMA_KEY, DataGate
from components.image_folder_example_gen import (
    ImageFolderExampleGen,
    count_classes,
    detect_layout,
    has_spans,
    make_input_config,
    make_output_config,
    make_range_config,
)
from components.serving_pusher import KEEP_VERSIONS_KEY, ServingPusher
from pipeline.warm_start_resolver import BlessedBeforeDataStrategy
from trainer import export, features
from trainer.config import TrainingConfig

TRANSFORM_MODULE = "trainer.transform.preprocessing_fn"
TRAINER_MODULE = "trainer.model.run_fn"
ACCURACY_METRIC = "accuracy"
TOP_K_ACCURACY_METRIC = "top_k_accuracy"

# Node ids, stable across runs and runners.
EXAMPLE_GEN = "ImageFolderExampleGen"
STATISTICS_GEN = "StatisticsGen"
SCHEMA_GEN = "SchemaGen"
EXAMPLE_VALIDATOR = "ExampleValidator"
DATA_GATE = "DataGate"
TRANSFORM = "Transform"
TRAINER = "Trainer"
BASELINE_RESOLVER = "LatestBlessedModelResolver"
WARM_START_RESOLVER = "WarmStartModelResolver"
EVALUATOR = "Evaluator"
PUSHER = "Pusher"
NODE_IDS = (
    EXAMPLE_GEN, STATISTICS_GEN, SCHEMA_GEN, EXAMPLE_VALIDATOR, DATA_GATE, TRANSFORM,
    WARM_START_RESOLVER, TRAINER, BASELINE_RESOLVER, EVALUATOR, PUSHER,
)
RESOLVER_IDS = (WARM_START_RESOLVER, BASELINE_RESOLVER)


def make_eval_config(
    gate: GateConfig, num_classes: int | None = None, baseline: bool = True
) -> tfma.EvalConfig:
    """What the Evaluator measures, and the gate a candidate must pass to be blessed.

    The model's `serving_examples` signature runs once per eval example (images
    are decoded once, with no separate preprocessing function). Labels are the
    examples' raw `label` strings, which TFMA maps to class indices through the
    model's own `classes` output, so a baseline whose vocabulary orders the
    classes differently is still scored correctly. Metrics are computed overall
    and per true class (each class's slice accuracy is that class's recall):
    accuracy (precision of the top-1 class, micro-averaged), top-k accuracy
    (recall of the top k), the multi-class confusion matrix and example counts.
    All are TFMA-native, so no Keras metric is compiled.

    The gate: overall accuracy at least `min_accuracy`, and no drop of more than
    `max_accuracy_drop` against the last blessed model; with `min_class_recall`,
    every class's recall at least that. Without a `baseline` model the
    no-regression bound is left out (TFMA refuses a change threshold then).

    Top-k accuracy is measured only when `num_classes` is known to exceed k
    (TFMA fails on a model with k scores or fewer).
    """
    overall = tfma.SlicingSpec()
    per_class = tfma.SlicingSpec(feature_keys=[features.LABEL_KEY])
    accuracy_gate = [
        tfma.PerSliceMetricThreshold(
            slicing_specs=[overall],
            threshold=tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(
                    lower_bound={"value": gate.min_accuracy}
                ),
                change_threshold=tfma.GenericChangeThreshold(
                    direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                    absolute={"value": -gate.max_accuracy_drop - 1e-10},
                ) if baseline else None,
            ),
        )
    ]
    if gate.min_class_recall > 0:
        accuracy_gate.append(
            tfma.PerSliceMetricThreshold(
                slicing_specs=[per_class],
                threshold=tfma.MetricThreshold(
                    value_threshold=tfma.GenericValueThreshold(
                        lower_bound={"value": gate.min_class_recall}
                    )
                ),
            )
        )
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name=export.SERVING_EXAMPLES,
                label_key=features.LABEL_KEY,
                # Known, so TFMA does not try loading each model as Keras first.
                model_type=tfma.TF_GENERIC,
            )
        ],
        slicing_specs=[overall, per_class],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(
                        class_name="Precision",
                        config=json.dumps({"name": ACCURACY_METRIC}),
                        per_slice_thresholds=accuracy_gate,
                    )
                ],
                binarize=tfma.BinarizationOptions(top_k_list={"values": [1]}),
            ),
            *_top_k_metrics_specs(gate.accuracy_top_k, num_classes),
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
                    tfma.MetricConfig(class_name="ExampleCount"),
                ]
            ),
        ],
    )


def _top_k_metrics_specs(k: int, num_classes: int | None) -> list[tfma.MetricsSpec]:
    if num_classes is None or num_classes <= k:
        return []
    return [
        tfma.MetricsSpec(
            metrics=[
                tfma.MetricConfig(
                    class_name="Recall", config=json.dumps({"name": TOP_K_ACCURACY_METRIC})
                )
            ],
            binarize=tfma.BinarizationOptions(top_k_list={"values": [k]}),
        )
    ]


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
            V2, a `PipelineContainerSpec.ResourceSpec`, e.g. GPUs for the Trainer).
        enable_cache: Reuse outputs of nodes whose inputs did not change.
        layout: The data folder's layout, one of image_folder_example_gen.LAYOUTS
            (e.g. "classes", "presplit-test", "span-classes"); None lists
            `data_root` to find it, which an object store may not allow.
        baseline: Evaluate against the last blessed model (a Resolver node) and
            refuse a regression from it. False leaves the resolver out and keeps
            only the absolute bounds: open-source Kubeflow Pipelines 2.x runs no
            resolver tasks.

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
    spans = has_spans(layout or detect_layout(data_root))
    if not spans and (ingest.span or ingest.span_window > 1):
        raise ValueError(
            f"span={ingest.span} and span_window={ingest.span_window} need span-<N> folders; "
            f"the data layout is {layout or detect_layout(data_root)!r}"
        )

    # Read the image folder (the latest span, or the one asked) into tf.Examples,
    # accounting for every file.
    example_gen = ImageFolderExampleGen(
        input_base=data_root,
        input_config=input_config,
        output_config=make_output_config(input_config, ingest.eval_percent, ingest.test_percent),
        ingest_options=image_files.IngestOptions(max_side=ingest.max_side),
        min_images_per_class=ingest.min_images_per_class,
        range_config=make_range_config(ingest.span) if spans else None,
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

    # Stop here, naming the anomalies, when the data is unfit: too few examples, a
    # class missing against the schema or the previous span, label drift from the
    # previous span (its statistics resolved from ML Metadata). Transform and the
    # Trainer read the schema the gate passes on, so nothing trains on unfit data.
    data_gate = DataGate(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"],
        anomalies=example_validator.outputs["anomalies"],
        previous_statistics=(
            _every_output_of(
                STATISTICS_GEN, "statistics", tfx.types.standard_artifacts.ExampleStatistics
            )
            if spans else None
        ),
        min_examples=ingest.min_examples,
        max_label_drift=ingest.max_label_drift,
    ).with_id(DATA_GATE)
    components.append(data_gate)
    checked_schema = data_gate.outputs[CHECKED_SCHEMA_KEY]

    # With spans, Transform and the Trainer may read a rolling window of the last
    # spans ingested (TFX's rolling_range over every ExampleGen output in ML Metadata).
    training_examples = example_gen.outputs["examples"]
    if spans and ingest.span_window > 1:
        training_examples = canned_resolver_functions.rolling_range(
            tfx.dsl.Channel(
                type=tfx.types.standard_artifacts.Examples,
                producer_component_id=EXAMPLE_GEN,
                output_key="examples",
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
        # Only what preprocessing depends on: a new head or optimizer keeps Transform cached.
        custom_config=training.preprocessing_dict(),
    ).with_id(TRANSFORM)
    components.append(transform)

    # The last model blessed before this data arrived, to start training from
    # (the same on every re-run of unchanged data, so the Trainer stays cached).
    warm_start_model = None
    if training.warm_start:
        warm_start_resolver = tfx.dsl.Resolver(
            strategy_class=BlessedBeforeDataStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
            examples=training_examples,
        ).with_id(WARM_START_RESOLVER)
        components.append(warm_start_resolver)
        warm_start_model = warm_start_resolver.outputs["model"]

    # Train a new head on the frozen pretrained backbone (from the base model's if it fits).
    trainer = tfx.components.Trainer(
        run_fn=TRAINER_MODULE,
        examples=training_examples,
        transform_graph=transform.outputs["transform_graph"],
        schema=checked_schema,
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=training.to_dict(),
        base_model=warm_start_model,
    ).with_id(TRAINER)
    components.append(trainer)

    # The last blessed model is the baseline the candidate must not regress from.
    baseline_model = None
    if baseline:
        baseline_resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id(BASELINE_RESOLVER)
        components.append(baseline_resolver)
        baseline_model = baseline_resolver.outputs["model"]

    # Bless the candidate only if it clears the absolute and no-regression bounds.
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline_model,
        schema=schema_gen.outputs["schema"],
        eval_config=make_eval_config(
            gate, num_classes=None if layout else count_classes(data_root, ingest.span),
            baseline=baseline,
        ),
        example_splits=["eval"],
    ).with_id(EVALUATOR)
    components.append(evaluator)

    # Push a blessed model, once, into TF Serving's <model>/<version>/ layout, with
    # warm-up requests, a model card and models.config; keep the newest versions.
    pusher = ServingPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)
        ),
        custom_config={KEEP_VERSIONS_KEY: gate.keep_versions},
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
