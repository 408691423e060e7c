"""What `transferline report` shows about one pipeline run, gathered from ML Metadata
and the run's artifacts.

`gather_report_data` reads: the run's executions, inputs and outputs (ML Metadata),
the dataset (ImageFolderExampleGen's ingest summary, StatisticsGen's label counts),
the training history (the Trainer's `history.json`), TFMA's metrics, thresholds and
validation result (the Evaluator), the push (the Pusher's PushedModel), and, by
running the trained model's `serving_examples` signature over the eval split, a
confusion matrix, per-class precision and recall, and the misclassified images.
A part that cannot be read leaves a note saying why; it never stops the report.
"""

from __future__ import annotations

import dataclasses
import datetime
import heapq
import itertools
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
from google.protobuf import json_format
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tensorflow_model_analysis.metrics import metric_specs, metric_types
from tensorflow_model_analysis.slicer import slicer_lib
from tfx.utils import path_utils

from components import image_folder_example_gen, serving_pusher
from pipeline import local_runner, model_card, run_summary
from pipeline import pipeline as pipeline_def
from trainer import export, features
from trainer.model import HISTORY_FILE

DEFAULT_MAX_MISCLASSIFIED = 60
_PIPELINE_CONTEXT = "pipeline"
_RUN_CONTEXT = "pipeline_run"
_NODE_CONTEXT = "node"
_PREDICT_BATCH_SIZE = 64
_CANDIDATE_MODEL_NAMES = ("", "candidate")
_BASELINE_MODEL_NAME = "baseline"


class ReportError(ValueError):
    """The report cannot be made (one line says why)."""


# ------------------------------------------------------------------ ML Metadata


@dataclasses.dataclass(frozen=True)
class ArtifactRef:
    """An artifact as an execution saw it: the event's key, id, type and URI."""

    key: str
    id: int
    type: str
    uri: str
    properties: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ExecutionRef:
    """One node's execution in the run."""

    id: int
    node_id: str
    type: str
    state: str
    started_ms: int
    finished_ms: int
    properties: Mapping[str, Any]
    inputs: tuple[ArtifactRef, ...]
    outputs: tuple[ArtifactRef, ...]


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """A pipeline run: its ML Metadata context and its executions, in the order they ran."""

    pipeline_name: str
    name: str
    context_id: int
    created_ms: int
    executions: tuple[ExecutionRef, ...]
    nodes: Mapping[str, run_summary.NodeRecord]

    def execution(self, node_id: str) -> ExecutionRef | None:
        return next((e for e in self.executions if e.node_id == node_id), None)

    def output(self, node_id: str, key: str) -> ArtifactRef | None:
        execution = self.execution(node_id)
        return next((a for a in execution.outputs if a.key == key), None) if execution else None

    def input(self, node_id: str, key: str) -> ArtifactRef | None:
        execution = self.execution(node_id)
        return next((a for a in execution.inputs if a.key == key), None) if execution else None


def open_store(workdir: str) -> metadata_store.MetadataStore:
    """The workdir's ML Metadata, opened read-only.

    Raises:
        ReportError: The workdir holds no `metadata.sqlite`.
    """
    from tfx import v1 as tfx

    path = local_runner.WorkdirLayout(workdir).metadata_path
    if not os.path.isfile(path):
        raise ReportError(
            f"no ML Metadata at {path}: run `transferline run --workdir {workdir}` first"
        )
    config = tfx.orchestration.metadata.sqlite_metadata_connection_config(path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def list_runs(
    store: metadata_store.MetadataStore, pipeline_name: str
) -> list[metadata_store_pb2.Context]:
    """The pipeline's run contexts, oldest first."""
    pipeline = store.get_context_by_type_and_name(_PIPELINE_CONTEXT, pipeline_name)
    if pipeline is None:
        return []
    runs = [
        c for c in store.get_children_contexts_by_context(pipeline.id) if c.type == _RUN_CONTEXT
    ]
    if not runs:  # Runs recorded without a parent link: find them through their executions.
        by_id = {}
        for execution in store.get_executions_by_context(pipeline.id):
            for context in store.get_contexts_by_execution(execution.id):
                if context.type == _RUN_CONTEXT:
                    by_id[context.id] = context
        runs = list(by_id.values())
    return sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id))


def find_run(
    store: metadata_store.MetadataStore, pipeline_name: str, run_name: str | None = None
) -> RunRecord:
    """The run named `run_name`, or the latest run.

    Raises:
        ReportError: The pipeline has no runs, or none named `run_name`.
    """
    runs = list_runs(store, pipeline_name)
    if not runs:
        raise ReportError(f"ML Metadata records no run of pipeline {pipeline_name!r}")
    if run_name is None:
        return read_run(store, pipeline_name, runs[-1])
    named = [run for run in runs if run.name == run_name]
    if not named:
        recent = ", ".join(run.name for run in runs[-5:])
        raise ReportError(
            f"no run named {run_name!r} of pipeline {pipeline_name!r}; latest: {recent}"
        )
    return read_run(store, pipeline_name, named[0])


def read_run(
    store: metadata_store.MetadataStore, pipeline_name: str, run: metadata_store_pb2.Context
) -> RunRecord:
    """Every node's latest execution in `run`, with its input and output artifacts."""
    latest: dict[str, metadata_store_pb2.Execution] = {}
    for execution in store.get_executions_by_context(run.id):
        node_id = _node_id(store, execution.id, pipeline_name)
        if node_id is not None and (node_id not in latest or execution.id > latest[node_id].id):
            latest[node_id] = execution
    events = store.get_events_by_execution_ids([e.id for e in latest.values()])
    artifacts = {a.id: a for a in store.get_artifacts_by_id(list({e.artifact_id for e in events}))}
    executions, nodes = [], {}
    for node_id, execution in sorted(latest.items(), key=lambda item: item[1].id):
        own = [e for e in events if e.execution_id == execution.id and e.artifact_id in artifacts]
        inputs = _artifact_refs(
            own,
            artifacts,
            (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT),
        )
        outputs = _artifact_refs(
            own,
            artifacts,
            (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT),
        )
        state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
        executions.append(
            ExecutionRef(
                id=execution.id,
                node_id=node_id,
                type=execution.type,
                state=state,
                started_ms=execution.create_time_since_epoch,
                finished_ms=execution.last_update_time_since_epoch,
                properties=_properties(execution),
                inputs=inputs,
                outputs=outputs,
            )
        )
        proto_outputs: dict[str, list[metadata_store_pb2.Artifact]] = {}
        for ref in outputs:
            proto_outputs.setdefault(ref.key, []).append(artifacts[ref.id])
        nodes[node_id] = run_summary.NodeRecord(node_id, state, proto_outputs)
    return RunRecord(
        pipeline_name=pipeline_name,
        name=run.name,
        context_id=run.id,
        created_ms=run.create_time_since_epoch,
        executions=tuple(executions),
        nodes=nodes,
    )


def _node_id(
    store: metadata_store.MetadataStore, execution_id: int, pipeline_name: str
) -> str | None:
    prefix = f"{pipeline_name}."
    for context in store.get_contexts_by_execution(execution_id):
        if context.type == _NODE_CONTEXT and context.name.startswith(prefix):
            return context.name[len(prefix) :]
    return None


def _artifact_refs(
    events: list[metadata_store_pb2.Event],
    artifacts: Mapping[int, metadata_store_pb2.Artifact],
    types: tuple[int, ...],
) -> tuple[ArtifactRef, ...]:
    refs = []
    for event in events:
        if event.type not in types:
            continue
        artifact = artifacts[event.artifact_id]
        key = event.path.steps[0].key if event.path.steps else ""
        refs.append(
            ArtifactRef(key, artifact.id, artifact.type, artifact.uri, _properties(artifact))
        )
    return tuple(sorted(refs, key=lambda ref: (ref.key, ref.id)))


def _properties(node: metadata_store_pb2.Artifact | metadata_store_pb2.Execution) -> dict[str, Any]:
    values = {}
    for name, value in [*node.properties.items(), *node.custom_properties.items()]:
        kind = value.WhichOneof("value")
        if kind in ("int_value", "double_value", "string_value", "bool_value"):
            values[name] = getattr(value, kind)
        elif kind is not None:
            values[name] = json_format.MessageToDict(getattr(value, kind))
    return values


# ---------------------------------------------------------------------- dataset


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
    """Which data, how much of it, and what was left out.

    Attributes:
        input_base: The image folder.
        fingerprint: ImageFolderExampleGen's fingerprint of the folder tree.
        span: The ExampleGen span.
        examples_uri: The Examples artifact's URI.
        examples_id: The Examples artifact's ML Metadata id.
        counts: Images per class per split: {split: {class: n}}.
        files: Files seen and their count per status.
        not_used: Skipped and duplicate files: {"path", "reason"}.
    """

    input_base: str | None
    fingerprint: str | None
    span: int | None
    examples_uri: str
    examples_id: int
    counts: Mapping[str, Mapping[str, int]]
    files: Mapping[str, int]
    not_used: tuple[Mapping[str, str], ...]


def gather_dataset(run: RunRecord, summary: Mapping[str, Any]) -> DatasetSummary | None:
    """The dataset section, or None if the run made no Examples."""
    examples = run.output(pipeline_def.EXAMPLE_GEN, "examples")
    if examples is None:
        return None
    generation = run.execution(pipeline_def.EXAMPLE_GEN)
    statistics = run.output(pipeline_def.STATISTICS_GEN, "statistics")
    span = examples.properties.get("span", generation.properties.get("span"))
    return DatasetSummary(
        input_base=generation.properties.get("input_base"),
        fingerprint=examples.properties.get("input_fingerprint")
        or generation.properties.get("input_fingerprint"),
        span=span,
        examples_uri=examples.uri,
        examples_id=examples.id,
        counts=class_counts_per_split(examples.uri, statistics.uri if statistics else None),
        files=dict(summary.get("files", {})),
        not_used=tuple(summary.get("skipped", ())),
    )


def class_counts_per_split(
    examples_uri: str, statistics_uri: str | None = None
) -> dict[str, dict[str, int]]:
    """Images per class per split: from StatisticsGen's label histogram where it
    accounts for every example, else by reading the split's labels."""
    counts = {}
    for split_dir in sorted(tf.io.gfile.glob(os.path.join(examples_uri, "Split-*"))):
        split = os.path.basename(split_dir.rstrip("/"))[len("Split-") :]
        from_stats = (
            _label_counts_from_statistics(statistics_uri, split) if statistics_uri else None
        )
        counts[split] = from_stats if from_stats is not None else _count_labels(split_dir)
    return counts


def _label_counts_from_statistics(statistics_uri: str, split: str) -> dict[str, int] | None:
    path = os.path.join(statistics_uri, f"Split-{split}", "FeatureStats.pb")
    if not tf.io.gfile.exists(path):
        return None
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    with tf.io.gfile.GFile(path, "rb") as f:
        stats.ParseFromString(f.read())
    counts: dict[str, int] = {}
    total = 0
    for dataset in stats.datasets:
        total += dataset.num_examples
        for feature in dataset.features:
            if list(feature.path.step) == [features.LABEL_KEY]:
                for bucket in feature.string_stats.rank_histogram.buckets:
                    counts[bucket.label] = counts.get(bucket.label, 0) + int(bucket.sample_count)
    return dict(sorted(counts.items())) if sum(counts.values()) == total else None


def _count_labels(split_dir: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for example in _read_examples(split_dir):
        label = example.features.feature[features.LABEL_KEY].bytes_list.value[0].decode()
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def _split_files(split_dir: str) -> list[str]:
    return sorted(f for f in tf.io.gfile.glob(os.path.join(split_dir, "*")) if not f.endswith("/"))


def _tfrecord_dataset(split_dir: str) -> tf.data.Dataset:
    files = _split_files(split_dir)
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    return tf.data.TFRecordDataset(files, compression_type=compression)


def _read_examples(split_dir: str) -> Iterator[tf.train.Example]:
    for record in _tfrecord_dataset(split_dir).as_numpy_iterator():
        yield tf.train.Example.FromString(record)


# --------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainingSummary:
    """The Trainer's settings, its per-epoch history and what it wrote.

    Attributes:
        config: The training settings the Trainer was given.
        phases: Per phase, in training order ("head", then "fine_tuning" if
            any): each metric's value per epoch ("loss", "val_loss", ...).
        best: The epoch whose weights were kept: {"phase", "epoch" (from 1),
            metric values}; None if not recorded.
        unfrozen_layers: Backbone layers fine-tuning trained.
        model_uri: The Model artifact.
        model_id: Its ML Metadata id.
        model_run_uri: The ModelRun artifact (logs and history).
        transform_graph_uri: The Transform graph the Trainer used.
    """

    config: Mapping[str, Any]
    phases: Mapping[str, Mapping[str, tuple[float, ...]]]
    best: Mapping[str, Any] | None
    unfrozen_layers: tuple[str, ...]
    model_uri: str | None
    model_id: int | None
    model_run_uri: str | None
    transform_graph_uri: str | None

    @property
    def epochs(self) -> int:
        """Epochs trained, all phases together."""
        return sum(max(map(len, metrics.values()), default=0) for metrics in self.phases.values())


def history_phases(history: Mapping[str, Any]) -> dict[str, dict[str, tuple[float, ...]]]:
    """Per-phase metric series from a Trainer `history.json`.

    Accepts both the flat Keras form ({"loss": [...], ...}, one phase, "head")
    and the phased form ({"head": {"loss": [...]}, "fine_tuning": {...}, "path":
    ..., "best": ...}).
    """

    def series(values: Any) -> bool:
        return isinstance(values, list) and all(
            isinstance(v, (int, float)) or v is None for v in values
        )

    if history and all(series(values) for values in history.values()):
        return {"head": {name: tuple(values) for name, values in history.items()}}
    return {
        phase: {name: tuple(values) for name, values in metrics.items() if series(values)}
        for phase, metrics in history.items()
        if isinstance(metrics, dict) and metrics and all(series(v) for v in metrics.values())
    }


def gather_training(run: RunRecord) -> TrainingSummary | None:
    """The training section, or None if the run has no Trainer execution."""
    trainer = run.execution(pipeline_def.TRAINER)
    if trainer is None:
        return None
    model = run.output(pipeline_def.TRAINER, "model")
    model_run = run.output(pipeline_def.TRAINER, "model_run")
    transform_graph = run.input(pipeline_def.TRAINER, "transform_graph")
    history: dict[str, Any] = {}
    if model_run is not None:
        path = os.path.join(model_run.uri, HISTORY_FILE)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                history = json.load(f)
    config = trainer.properties.get("custom_config")
    best = history.get("best")
    return TrainingSummary(
        config=json.loads(config) if isinstance(config, str) and config else {},
        phases=history_phases(history),
        best=best if isinstance(best, dict) else None,
        unfrozen_layers=tuple(history.get("unfrozen_layers") or ()),
        model_uri=model.uri if model else None,
        model_id=model.id if model else None,
        model_run_uri=model_run.uri if model_run else None,
        transform_graph_uri=transform_graph.uri if transform_graph else None,
    )


# ------------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True)
class ClassMetrics:
    """One class on the eval split; precision (recall) is None when nothing was
    predicted as (labelled) this class."""

    name: str
    support: int
    predicted: int
    correct: int

    @property
    def precision(self) -> float | None:
        return self.correct / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.correct / self.support if self.support else None


@dataclasses.dataclass(frozen=True)
class Misclassified:
    """An eval image the model got wrong."""

    path: str
    true_label: str
    predicted_label: str
    score: float
    image: bytes


@dataclasses.dataclass(frozen=True)
class EvalSummary:
    """The trained model run over the eval split.

    Attributes:
        model_dir: The SavedModel that was run.
        split: The split it was run over.
        model_classes: Class names in model-output order (the order of `scores`).
        classes: Every class, the model's and any eval label it lacks, sorted.
        confusion: confusion[true][predicted] counts, indexed like `classes`.
        misclassified: The most confident mistakes, at most the number asked for.
        misclassified_total: All mistakes.
        signatures: The SavedModel's signatures.
    """

    model_dir: str
    split: str
    model_classes: tuple[str, ...]
    classes: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    misclassified: tuple[Misclassified, ...]
    misclassified_total: int
    signatures: tuple[model_card.SignatureInfo, ...]

    @property
    def examples(self) -> int:
        return int(sum(map(sum, self.confusion)))

    @property
    def accuracy(self) -> float | None:
        correct = sum(self.confusion[i][i] for i in range(len(self.classes)))
        return correct / self.examples if self.examples else None

    @property
    def per_class(self) -> tuple[ClassMetrics, ...]:
        matrix = np.array(self.confusion, dtype=np.int64).reshape(len(self.classes), -1)
        return tuple(
            ClassMetrics(name, int(matrix[i].sum()), int(matrix[:, i].sum()), int(matrix[i, i]))
            for i, name in enumerate(self.classes)
        )


def evaluate_model(
    model_dir: str, split_dir: str, max_misclassified: int = DEFAULT_MAX_MISCLASSIFIED
) -> EvalSummary:
    """Runs the SavedModel's `serving_examples` over a split's tf.Examples.

    Args:
        model_dir: A SavedModel exported by `trainer.export`.
        split_dir: A `Split-<name>` directory of (GZIP) TFRecords of tf.Examples.
        max_misclassified: Most mistakes kept (with their images), the most
            confident first.

    Returns:
        Confusion matrix, mistakes and the model's signatures.
    """
    loaded = tf.saved_model.load(model_dir)
    serve = loaded.signatures[export.SERVING_EXAMPLES]
    (input_name,) = serve.structured_input_signature[1]
    spec = {
        key: tf.io.FixedLenFeature([], tf.string, default_value="")
        for key in (features.IMAGE_KEY, features.LABEL_KEY, features.PATH_KEY)
    }
    model_classes: list[str] = []
    pairs: list[tuple[str, str]] = []
    kept: list[tuple[float, int, Misclassified]] = []  # min-heap on score
    counter = itertools.count()
    for batch in _tfrecord_dataset(split_dir).batch(_PREDICT_BATCH_SIZE):
        outputs = serve(**{input_name: batch})
        parsed = tf.io.parse_example(batch, spec)
        if not model_classes:
            model_classes = [c.decode() for c in outputs[export.CLASSES_OUTPUT][0].numpy()]
        rows = zip(
            parsed[features.LABEL_KEY].numpy(),
            outputs[export.LABEL_OUTPUT].numpy(),
            outputs[export.SCORE_OUTPUT].numpy(),
            parsed[features.PATH_KEY].numpy(),
            parsed[features.IMAGE_KEY].numpy(),
            strict=True,
        )
        for true_label, predicted, score, path, image in rows:
            true_label, predicted = true_label.decode(), predicted.decode()
            pairs.append((true_label, predicted))
            if true_label != predicted and max_misclassified > 0:
                item = (
                    float(score),
                    next(counter),
                    Misclassified(path.decode(), true_label, predicted, float(score), image),
                )
                if len(kept) < max_misclassified:
                    heapq.heappush(kept, item)
                else:
                    heapq.heappushpop(kept, item)
    classes = sorted({*model_classes, *(label for pair in pairs for label in pair)})
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for true_label, predicted in pairs:
        matrix[index[true_label], index[predicted]] += 1
    return EvalSummary(
        model_dir=model_dir,
        split=os.path.basename(split_dir.rstrip("/")).removeprefix("Split-"),
        model_classes=tuple(model_classes),
        classes=tuple(classes),
        confusion=tuple(tuple(int(n) for n in row) for row in matrix),
        misclassified=tuple(item[2] for item in sorted(kept, key=lambda item: (-item[0], item[1]))),
        misclassified_total=sum(1 for true_label, predicted in pairs if true_label != predicted),
        signatures=serving_pusher.read_signatures(model_dir),
    )


# ------------------------------------------------------------------------- gate


@dataclasses.dataclass(frozen=True)
class ThresholdCheck:
    """One threshold of the gate, the values it was checked on, and the outcome.

    Attributes:
        slice: "Overall" or the slice, e.g. "label:red".
        metric: Metric name, with its sub key if any.
        kind: "value" (absolute bound) or "change" (against the baseline).
        requirement: The bound in words, e.g. ">= 0.5000".
        value: The candidate's value.
        baseline: The baseline's value (change thresholds).
        diff: Candidate minus baseline (change thresholds).
        outcome: "pass", "FAIL", or why it was not checked.
    """

    slice: str
    metric: str
    kind: str
    requirement: str
    value: float | None
    baseline: float | None
    diff: float | None
    outcome: str


@dataclasses.dataclass(frozen=True)
class MetricRow:
    """One scalar TFMA metric on one slice: candidate, baseline, difference."""

    slice: str
    metric: str
    candidate: float | None
    baseline: float | None
    diff: float | None


@dataclasses.dataclass(frozen=True)
class GateSummary:
    """The Evaluator's blessing decision and what drove it."""

    blessed: bool | None
    evaluation_uri: str | None
    blessing_uri: str | None
    baseline_model_uri: str | None
    baseline_model_id: int | None
    checks: tuple[ThresholdCheck, ...]
    failures: tuple[str, ...]
    metrics: tuple[MetricRow, ...]


_MetricIndex = dict[tuple[str, str, str, bool], float]  # (slice, metric, role, is_diff) -> value


def gather_gate(run: RunRecord) -> GateSummary | None:
    """The gate section, or None if the run has no Evaluator execution."""
    evaluator = run.execution(pipeline_def.EVALUATOR)
    if evaluator is None:
        return None
    evaluation = run.output(pipeline_def.EVALUATOR, "evaluation")
    blessing = run.output(pipeline_def.EVALUATOR, "blessing")
    baseline = run.input(pipeline_def.EVALUATOR, "baseline_model")
    values: _MetricIndex = {}
    slices: set[tuple] = set()
    failures: list[tuple[str, str, bool, str]] = []
    if evaluation is not None and tf.io.gfile.isdir(evaluation.uri):
        values, slices = _load_metric_values(evaluation.uri)
        failures = _load_failures(evaluation.uri)
    eval_config = _configured_eval_config(evaluator.properties.get("eval_config"))
    checks = _threshold_checks(eval_config, values, slices, failures, baseline is not None)
    blessed = blessing.properties.get("blessed") if blessing is not None else None
    return GateSummary(
        blessed=None if blessed is None else blessed == 1,
        evaluation_uri=evaluation.uri if evaluation else None,
        blessing_uri=blessing.uri if blessing else None,
        baseline_model_uri=baseline.uri if baseline else None,
        baseline_model_id=baseline.id if baseline else None,
        checks=checks,
        failures=tuple(message for *_, message in failures),
        metrics=_metric_rows(values),
    )


def _slice_name(slice_key: tuple) -> str:
    return slicer_lib.stringify_slice_key(slice_key) if slice_key else "Overall"


def _metric_name(key: metric_types.MetricKey) -> str:
    """The metric's name; its sub-key too, except top-1 for accuracy, which defines it."""
    if key.name == pipeline_def.ACCURACY_METRIC and key.sub_key == metric_types.SubKey(top_k=1):
        return key.name
    return f"{key.name} [{key.sub_key}]" if key.sub_key else key.name


def _role(key: metric_types.MetricKey) -> str | None:
    if key.model_name in _CANDIDATE_MODEL_NAMES:
        return "candidate"
    return "baseline" if key.model_name == _BASELINE_MODEL_NAME else None


def _load_metric_values(evaluation_uri: str) -> tuple[_MetricIndex, set[tuple]]:
    values: _MetricIndex = {}
    slices: set[tuple] = set()
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        if metrics_for_slice.HasField("cross_slice_key"):
            continue
        slice_key = slicer_lib.deserialize_slice_key(metrics_for_slice.slice_key)
        slices.add(slice_key)
        for entry in metrics_for_slice.metric_keys_and_values:
            key = metric_types.MetricKey.from_proto(entry.key)
            role = _role(key)
            if role is None or not entry.value.HasField("double_value"):
                continue
            values[(_slice_name(slice_key), _metric_name(key), role, key.is_diff)] = (
                entry.value.double_value.value
            )
    return values, slices


def _load_failures(evaluation_uri: str) -> list[tuple[str, str, bool, str]]:
    """(slice, metric, is_diff, message) for each failed threshold."""
    result = tfma.load_validation_result(evaluation_uri)
    failures = []
    for per_slice in result.metric_validations_per_slice:
        slice_name = _slice_name(slicer_lib.deserialize_slice_key(per_slice.slice_key))
        for failure in per_slice.failures:
            key = metric_types.MetricKey.from_proto(failure.metric_key)
            value = failure.metric_value.double_value.value
            message = failure.message or (
                f"{_metric_name(key)}{' change' if key.is_diff else ''} = {value:.4f} on "
                f"{slice_name} fails {json_format.MessageToDict(failure.metric_threshold)}"
            )
            failures.append((slice_name, _metric_name(key), key.is_diff, message))
    return failures


def _configured_eval_config(text: Any) -> tfma.EvalConfig | None:
    """The EvalConfig the pipeline gave the Evaluator (with its change thresholds,
    which TFX drops from the config it records when there is no baseline)."""
    if not isinstance(text, str) or not text:
        return None
    return json_format.Parse(text, tfma.EvalConfig())


def _threshold_checks(
    eval_config: tfma.EvalConfig | None,
    values: _MetricIndex,
    slices: set[tuple],
    failures: list[tuple[str, str, bool, str]],
    has_baseline: bool,
) -> tuple[ThresholdCheck, ...]:
    if eval_config is None:
        return ()
    failed = {(slice_name, metric, is_diff) for slice_name, metric, is_diff, _ in failures}
    checks = []
    thresholds = metric_specs.metric_thresholds_from_metrics_specs(
        eval_config.metrics_specs, eval_config=eval_config
    )
    for key, specs in thresholds.items():
        metric = _metric_name(key)
        for slicing_spec, threshold in specs:
            for slice_key in _matching_slices(slicing_spec, slices):
                slice_name = _slice_name(slice_key)
                value = values.get((slice_name, metric, "candidate", False))
                if key.is_diff:
                    baseline = values.get((slice_name, metric, "baseline", False))
                    diff = values.get((slice_name, metric, "candidate", True))
                    if not has_baseline:
                        outcome = "not applied: no baseline yet"
                    else:
                        outcome = "FAIL" if (slice_name, metric, True) in failed else "pass"
                    checks.append(
                        ThresholdCheck(
                            slice_name,
                            metric,
                            "change",
                            _change_requirement(threshold),
                            value,
                            baseline,
                            diff,
                            outcome,
                        )
                    )
                else:
                    if (slice_name, metric, False) in failed:
                        outcome = "FAIL"
                    else:
                        outcome = "pass" if value is not None else "no value recorded"
                    checks.append(
                        ThresholdCheck(
                            slice_name,
                            metric,
                            "value",
                            _value_requirement(threshold),
                            value,
                            None,
                            None,
                            outcome,
                        )
                    )
    return tuple(
        sorted(checks, key=lambda c: (c.slice != "Overall", c.slice, c.metric, c.kind != "value"))
    )


def _matching_slices(slicing_spec: Any, slices: set[tuple]) -> list[tuple]:
    if slicing_spec is None or not isinstance(slicing_spec, tfma.SlicingSpec):
        return [()]
    single = slicer_lib.SingleSliceSpec(spec=slicing_spec)
    matching = sorted((s for s in slices if single.is_slice_applicable(s)), key=str)
    return matching or ([()] if single.is_overall() else [])


def _value_requirement(threshold: tfma.GenericValueThreshold) -> str:
    lower = threshold.lower_bound.value if threshold.HasField("lower_bound") else None
    upper = threshold.upper_bound.value if threshold.HasField("upper_bound") else None
    if lower is not None and upper is not None:
        return f"in [{lower:.4f}, {upper:.4f}]"
    if lower is not None:
        return f">= {lower:.4f}"
    return f"<= {upper:.4f}" if upper is not None else "any"


def _change_requirement(threshold: tfma.GenericChangeThreshold) -> str:
    higher = threshold.direction == tfma.MetricDirection.HIGHER_IS_BETTER
    sign = ">=" if higher else "<="
    parts = []
    if threshold.HasField("absolute"):
        parts.append(f"change {sign} {threshold.absolute.value:+.4f}")
    if threshold.HasField("relative"):
        parts.append(f"relative change {sign} {threshold.relative.value:+.2%}")
    return " and ".join(parts) or "any"


def _metric_rows(values: _MetricIndex) -> tuple[MetricRow, ...]:
    names = sorted(
        {(slice_name, metric) for slice_name, metric, _, _ in values},
        key=lambda item: (item[0] != "Overall", item),
    )
    return tuple(
        MetricRow(
            slice_name,
            metric,
            values.get((slice_name, metric, "candidate", False)),
            values.get((slice_name, metric, "baseline", False)),
            values.get((slice_name, metric, "candidate", True)),
        )
        for slice_name, metric in names
    )


# ------------------------------------------------------------------------- push


@dataclasses.dataclass(frozen=True)
class PushSummary:
    """Where the run's model serves from, if anywhere."""

    pushed_this_run: bool
    destination: str | None
    pushed_at_ms: int | None
    artifact_id: int | None

    @property
    def version(self) -> str | None:
        return os.path.basename(self.destination.rstrip("/")) if self.destination else None

    @property
    def model_name(self) -> str | None:
        return (
            os.path.basename(os.path.dirname(self.destination.rstrip("/")))
            if self.destination
            else None
        )


def gather_push(run: RunRecord, summary: Mapping[str, Any]) -> PushSummary | None:
    """The push section, or None if the run has no Pusher execution."""
    pusher = run.execution(pipeline_def.PUSHER)
    if pusher is None:
        return None
    pushed = run.output(pipeline_def.PUSHER, "pushed_model")
    destination = summary.get("pushed_model")
    return PushSummary(
        pushed_this_run=bool(summary.get("pushed_this_run")),
        destination=destination,
        pushed_at_ms=_pushed_at_ms(destination) if destination else None,
        artifact_id=pushed.id if pushed else None,
    )


def _pushed_at_ms(version_dir: str) -> int | None:
    source = os.path.join(version_dir, serving_pusher.SOURCE_FILE)
    if not tf.io.gfile.exists(source):
        return None
    with tf.io.gfile.GFile(source) as f:
        pushed_at = json.load(f).get("pushed_at")
    return int(pushed_at * 1000) if isinstance(pushed_at, (int, float)) else None


# ---------------------------------------------------------------------- the run


@dataclasses.dataclass(frozen=True)
class ReportData:
    """Everything the report and the model card show about one run.

    Attributes:
        workdir: The work directory read.
        run: The run and its executions.
        summary: `pipeline.run_summary.build_summary` of the run.
        dataset: None where the run made no examples.
        training: None where the run has no Trainer execution.
        evaluation: None where the model could not be run over the eval split.
        gate: None where the run has no Evaluator execution.
        push: None where the run has no Pusher execution.
        notes: What could not be read, and why.
        generated_at: When this was gathered (UTC).
    """

    workdir: str
    run: RunRecord
    summary: Mapping[str, Any]
    dataset: DatasetSummary | None
    training: TrainingSummary | None
    evaluation: EvalSummary | None
    gate: GateSummary | None
    push: PushSummary | None
    notes: tuple[str, ...]
    generated_at: str


def evaluated_split(run: RunRecord) -> str:
    """The split the Evaluator evaluated (its `example_splits`), default "eval"."""
    evaluator = run.execution(pipeline_def.EVALUATOR)
    splits = evaluator.properties.get("example_splits") if evaluator else None
    try:
        names = json.loads(splits) if isinstance(splits, str) else None
    except json.JSONDecodeError:
        names = None
    return names[0] if names else image_folder_example_gen.EVAL_SPLIT


def gather_report_data(
    workdir: str,
    *,
    pipeline_name: str = local_runner.PIPELINE_NAME,
    run_name: str | None = None,
    max_misclassified: int = DEFAULT_MAX_MISCLASSIFIED,
    store: metadata_store.MetadataStore | None = None,
) -> ReportData:
    """Reads one run (the latest unless `run_name` is given) of the workdir's pipeline.

    Raises:
        ReportError: No ML Metadata in `workdir`, or no such run.
    """
    store = store or open_store(workdir)
    run = find_run(store, pipeline_name, run_name)
    summary = run_summary.build_summary(dict(run.nodes))
    notes: list[str] = []
    for execution in run.executions:
        if execution.state not in ("COMPLETE", "CACHED"):
            notes.append(f"{execution.node_id} (execution {execution.id}) ended {execution.state}")
    training = gather_training(run)
    dataset = gather_dataset(run, summary)
    evaluation = None
    if dataset is None:
        notes.append("no eval predictions: the run made no examples")
    elif training is None or training.model_uri is None:
        notes.append("no eval predictions: the run trained no model")
    else:
        split_dir = os.path.join(dataset.examples_uri, f"Split-{evaluated_split(run)}")
        try:
            evaluation = evaluate_model(
                path_utils.serving_model_path(training.model_uri), split_dir, max_misclassified
            )
        except (OSError, ValueError, KeyError, tf.errors.OpError) as error:
            notes.append(
                f"no eval predictions: running the model over {split_dir} failed: "
                f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
            )
    return ReportData(
        workdir=os.path.abspath(workdir),
        run=run,
        summary=summary,
        dataset=dataset,
        training=training,
        evaluation=evaluation,
        gate=gather_gate(run),
        push=gather_push(run, summary),
        notes=tuple(notes),
        generated_at=iso_time(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1000),
    )


def pushed_runs(store: metadata_store.MetadataStore, pipeline_name: str) -> dict[str, str]:
    """Every version the pipeline pushed, with the run that pushed it: {version dir: run name}."""
    runs = {run.id: run for run in list_runs(store, pipeline_name)}
    pushed = {}
    for artifact in store.get_artifacts_by_type("PushedModel"):
        props = _properties(artifact)
        destination = props.get("pushed_destination")
        if props.get("pushed") != 1 or not destination:
            continue
        for event in store.get_events_by_artifact_ids([artifact.id]):
            if event.type != metadata_store_pb2.Event.OUTPUT:
                continue
            for context in store.get_contexts_by_execution(event.execution_id):
                if context.id in runs:
                    pushed[destination] = context.name
    return pushed


def iso_time(epoch_ms: float | None) -> str:
    """`2026-11-23 15:09:42 UTC` for milliseconds since the epoch; '' for None."""
    if not epoch_ms:
        return ""
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
