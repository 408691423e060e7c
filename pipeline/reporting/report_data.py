"""What `transferline report` shows about one pipeline run, gathered from ML Metadata
and the run's artifacts.

`gather_report_data` reads: the run (`pipeline.reporting.runs`), the dataset
(ImageFolderExampleGen's ingest summary, StatisticsGen's label counts), the
training history (the Trainer's `history.json`), TFMA's metrics, thresholds and
validation result (`components.tfma_results`), the push (the Pusher's
PushedModel), and the trained model re-run over the eval split
(`pipeline.reporting.eval_predictions`). A part that cannot be read leaves a note
saying why; it never stops the report.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from ml_metadata import metadata_store
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx.types import standard_component_specs as keys
from tfx.utils import path_utils

from components import model_card, serving_pusher, tfma_results
from pipeline import pipeline as pipeline_def
from pipeline.reporting import eval_predictions, run_summary
from pipeline.reporting.runs import (
    ABANDONED,
    ABANDONED_PROPERTY,
    ExecutionRef,
    RunRecord,
    find_run,
    open_store,
)
from trainer import features
from trainer.errors import one_line
from trainer.model import HISTORY_FILE

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
    examples = run.output(pipeline_def.EXAMPLE_GEN, keys.EXAMPLES_KEY)
    if examples is None:
        return None
    generation = run.execution(pipeline_def.EXAMPLE_GEN)
    statistics = run.output(pipeline_def.STATISTICS_GEN, keys.STATISTICS_KEY)
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
    for example in eval_predictions.read_examples(split_dir):
        label = example.features.feature[features.LABEL_KEY].bytes_list.value[0].decode()
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


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
    model = run.output(pipeline_def.TRAINER, keys.MODEL_KEY)
    model_run = run.output(pipeline_def.TRAINER, keys.MODEL_RUN_KEY)
    transform_graph = run.input(pipeline_def.TRAINER, keys.TRANSFORM_GRAPH_KEY)
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


# ------------------------------------------------------------------------- gate


@dataclasses.dataclass(frozen=True)
class GateSummary:
    """The Evaluator's blessing decision, what drove it, and the artifacts behind it.

    Attributes:
        blessed: The decision; None if no blessing was recorded.
        evaluation_uri: The Evaluator's `evaluation` artifact.
        blessing_uri: Its `blessing` artifact.
        baseline: What it was compared with (`run_summary.baseline_summary`):
            the served version and its folder, or a note saying why nothing.
        baseline_model_uri: The copy of the served version the Evaluator
            scored; None without one.
        baseline_model_id: Its ML Metadata id.
        evaluation: TFMA's figures and the threshold checks
            (`components.tfma_results`); None if they could not be read.
    """

    blessed: bool | None
    evaluation_uri: str | None
    blessing_uri: str | None
    baseline: Mapping[str, Any]
    baseline_model_uri: str | None
    baseline_model_id: int | None
    evaluation: tfma_results.Evaluation | None

    @property
    def checks(self) -> tuple[tfma_results.ThresholdCheck, ...]:
        return self.evaluation.checks if self.evaluation else ()

    @property
    def failures(self) -> tuple[str, ...]:
        return self.evaluation.failures if self.evaluation else ()

    @property
    def metrics(self) -> tuple[tfma_results.MetricRow, ...]:
        return self.evaluation.rows if self.evaluation else ()


def gather_gate(
    run: RunRecord, evaluation: tfma_results.Evaluation | None
) -> GateSummary | None:
    """The gate section, or None if the run has no Evaluator execution."""
    if run.execution(pipeline_def.EVALUATOR) is None:
        return None
    evaluation_artifact = run.output(pipeline_def.EVALUATOR, keys.EVALUATION_KEY)
    blessing = run.output(pipeline_def.EVALUATOR, keys.BLESSING_KEY)
    baseline = run_summary.baseline_summary(run)
    copy = run.input(pipeline_def.EVALUATOR, keys.BASELINE_MODEL_KEY)
    scored = copy is not None and baseline["served_version"] is not None
    return GateSummary(
        blessed=serving_pusher.blessing_facts(blessing.properties)[0] if blessing else None,
        evaluation_uri=evaluation_artifact.uri if evaluation_artifact else None,
        blessing_uri=blessing.uri if blessing else None,
        baseline=baseline,
        baseline_model_uri=copy.uri if scored else None,
        baseline_model_id=copy.id if scored else None,
        evaluation=evaluation,
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
    pushed = run.output(pipeline_def.PUSHER, keys.PUSHED_MODEL_KEY)
    destination = summary.get("pushed_model")
    return PushSummary(
        pushed_this_run=bool(summary.get("pushed_this_run")),
        destination=destination,
        pushed_at_ms=_pushed_at_ms(destination) if destination else None,
        artifact_id=pushed.id if pushed else None,
    )


def _pushed_at_ms(version_dir: str) -> int | None:
    pushed_at = serving_pusher.read_source(version_dir).get("pushed_at")
    return int(pushed_at * 1000) if isinstance(pushed_at, (int, float)) else None


# ---------------------------------------------------------------------- the run


@dataclasses.dataclass(frozen=True)
class ReportData:
    """Everything the report and the model card show about one run.

    Attributes:
        workdir: The work directory read.
        run: The run and its executions.
        summary: `run_summary.build_summary` of the run.
        dataset: None where the run made no examples.
        training: None where the run has no Trainer execution.
        predictions: None where the model could not be run over the eval split.
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
    predictions: eval_predictions.EvalSummary | None
    gate: GateSummary | None
    push: PushSummary | None
    notes: tuple[str, ...]
    generated_at: str


def evaluated_split(run: RunRecord) -> str:
    """The split the Evaluator evaluated (its `example_splits`), default the eval split."""
    evaluator = run.execution(pipeline_def.EVALUATOR)
    splits = evaluator.properties.get(keys.EXAMPLE_SPLITS_KEY) if evaluator else None
    try:
        names = json.loads(splits) if isinstance(splits, str) else None
    except json.JSONDecodeError:
        names = None
    return names[0] if names else features.EVAL_SPLIT


def gather_report_data(
    workdir: str,
    *,
    pipeline_name: str,
    run_name: str | None = None,
    max_misclassified: int = eval_predictions.DEFAULT_MAX_MISCLASSIFIED,
    store: metadata_store.MetadataStore | None = None,
) -> ReportData:
    """Reads one run (the latest unless `run_name` is given) of the workdir's pipeline.

    Raises:
        ReportError: No ML Metadata in `workdir`, or no such run.
    """
    store = store or open_store(workdir)
    run = find_run(store, pipeline_name, run_name)
    evaluation = run_summary.read_evaluation(run)
    summary = run_summary.build_summary(run, evaluation)
    notes = [
        _unfinished_note(execution)
        for execution in run.executions
        if execution.state not in ("COMPLETE", "CACHED")
    ]
    training = gather_training(run)
    dataset = gather_dataset(run, summary)
    predictions = None
    if dataset is None:
        notes.append("no eval predictions: the run made no examples")
    elif training is None or training.model_uri is None:
        notes.append("no eval predictions: the run trained no model")
    else:
        split_dir = os.path.join(dataset.examples_uri, f"Split-{evaluated_split(run)}")
        try:
            predictions = eval_predictions.evaluate_model(
                path_utils.serving_model_path(training.model_uri), split_dir, max_misclassified
            )
        except (OSError, ValueError, KeyError, tf.errors.OpError) as error:
            notes.append(
                f"no eval predictions: running the model over {split_dir} failed: "
                f"{one_line(error)}"
            )
    return ReportData(
        workdir=os.path.abspath(workdir),
        run=run,
        summary=summary,
        dataset=dataset,
        training=training,
        predictions=predictions,
        gate=gather_gate(run, evaluation),
        push=gather_push(run, summary),
        notes=tuple(notes),
        generated_at=iso_time(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1000),
    )


def _unfinished_note(execution: ExecutionRef) -> str:
    """'Trainer (execution 7) ended FAILED', or why a dead run's step is abandoned."""
    if execution.state == ABANDONED:
        reason = execution.properties[ABANDONED_PROPERTY]
        return f"{execution.node_id} (execution {execution.id}) abandoned: {reason}"
    return f"{execution.node_id} (execution {execution.id}) ended {execution.state}"


def version_card(data: ReportData) -> model_card.ModelCardFacts | None:
    """The model card of the version the run's model serves as; None if it serves nowhere.

    The model, evaluation and gate facts are `model_card.version_facts`' (as in
    the card the Pusher wrote into the version); the dataset facts are added.
    """
    push, training, dataset = data.push, data.training, data.dataset
    if push is None or not push.destination or training is None or not training.model_uri:
        return None
    blessing = data.run.output(pipeline_def.EVALUATOR, keys.BLESSING_KEY)
    blessed, baseline = serving_pusher.blessing_facts(blessing.properties if blessing else {})
    facts = model_card.version_facts(
        model_path=path_utils.serving_model_path(training.model_uri),
        model_uri=training.model_uri,
        serving_path=push.destination,
        pushed_at=push.pushed_at_ms / 1000 if push.pushed_at_ms else None,
        evaluation=data.gate.evaluation if data.gate else None,
        blessed=blessed,
        baseline_model=baseline,
        pipeline_run=data.run.name,
    )
    if dataset is None:
        return facts
    return dataclasses.replace(
        facts,
        data_source=dataset.input_base or "",
        data_fingerprint=dataset.fingerprint or "",
        data_span=dataset.span,
        examples_per_split=dict(data.summary.get("examples", {})),
        images_per_class=dict(data.summary.get("images_per_class", {})),
        eval_images_per_class=dict(dataset.counts.get(evaluated_split(data.run), {})),
        files_not_used=len(dataset.not_used),
    )


def iso_time(epoch_ms: float | None) -> str:
    """`model_card.format_utc` for milliseconds since the epoch."""
    return model_card.format_utc(epoch_ms / 1000 if epoch_ms else None)
