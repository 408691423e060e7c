"""What a pipeline run did, read back from ML Metadata and its artifacts."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf
import tensorflow_model_analysis as tfma
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx.utils import path_utils

from components import data_gate, image_folder_example_gen, serving_pusher
from pipeline import evaluation as evaluation_lib
from pipeline import pipeline as pipeline_def
from trainer import export

_RUN_CONTEXT = "pipeline_run"
_NODE_CONTEXT = "node"
_STATE_NAMES = {
    value: name
    for name, value in metadata_store_pb2.Execution.State.items()
}


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """One node's execution in a run and the artifacts it output."""

    node_id: str
    state: str
    outputs: dict[str, list[metadata_store_pb2.Artifact]]


def read_latest_run(
    store: metadata_store.MetadataStore, pipeline_name: str
) -> dict[str, NodeRecord]:
    """Each node's execution in the pipeline's latest run, keyed by node id."""
    runs = [
        context
        for context in store.get_contexts_by_type(_RUN_CONTEXT)
        if _run_belongs_to(store, context, pipeline_name)
    ]
    if not runs:
        return {}
    run = max(runs, key=lambda context: (context.create_time_since_epoch, context.id))
    run_executions = {
        execution.id: execution for execution in store.get_executions_by_context(run.id)
    }
    records = {}
    for node_id in pipeline_def.NODE_IDS:
        node_context = store.get_context_by_type_and_name(
            _NODE_CONTEXT, f"{pipeline_name}.{node_id}"
        )
        if node_context is None:
            continue
        executions = [
            run_executions[execution.id]
            for execution in store.get_executions_by_context(node_context.id)
            if execution.id in run_executions
        ]
        if executions:
            execution = max(executions, key=lambda e: e.id)
            records[node_id] = NodeRecord(
                node_id, _STATE_NAMES[execution.last_known_state], _outputs_of(store, execution.id)
            )
    return records


def _run_belongs_to(
    store: metadata_store.MetadataStore, run: metadata_store_pb2.Context, pipeline_name: str
) -> bool:
    parents = store.get_parent_contexts_by_context(run.id)
    if parents:
        return any(parent.name == pipeline_name for parent in parents)
    executions = store.get_executions_by_context(run.id)
    if not executions:
        return False
    return any(
        context.name == pipeline_name
        for context in store.get_contexts_by_execution(executions[0].id)
    )


def _outputs_of(
    store: metadata_store.MetadataStore, execution_id: int
) -> dict[str, list[metadata_store_pb2.Artifact]]:
    events = [
        event
        for event in store.get_events_by_execution_ids([execution_id])
        if event.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    ]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    outputs: dict[str, list[metadata_store_pb2.Artifact]] = {}
    for event in events:
        key = event.path.steps[0].key if event.path.steps else ""
        outputs.setdefault(key, []).append(artifacts[event.artifact_id])
    return outputs


def _single(record: NodeRecord | None, key: str) -> metadata_store_pb2.Artifact | None:
    if record is None or not record.outputs.get(key):
        return None
    return record.outputs[key][0]


def _custom_int(artifact: metadata_store_pb2.Artifact, name: str) -> int | None:
    value = artifact.custom_properties.get(name)
    return value.int_value if value is not None and value.HasField("int_value") else None


def _custom_string(artifact: metadata_store_pb2.Artifact, name: str) -> str | None:
    value = artifact.custom_properties.get(name)
    return value.string_value if value is not None and value.HasField("string_value") else None


def examples_per_split(statistics_uri: str) -> dict[str, int]:
    """Example counts per split from StatisticsGen's output."""
    counts = {}
    for split_dir in sorted(tf.io.gfile.glob(os.path.join(statistics_uri, "Split-*"))):
        stats = statistics_pb2.DatasetFeatureStatisticsList()
        with tf.io.gfile.GFile(os.path.join(split_dir, "FeatureStats.pb"), "rb") as f:
            stats.ParseFromString(f.read())
        split = os.path.basename(split_dir.rstrip("/"))[len("Split-"):]
        counts[split] = sum(dataset.num_examples for dataset in stats.datasets)
    return counts


def overall_metrics(evaluation_uri: str) -> dict[str, float]:
    """Overall-slice metric values (baseline diffs excluded) from the Evaluator's output."""
    metrics = {}
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        if metrics_for_slice.slice_key.single_slice_keys:
            continue
        for entry in metrics_for_slice.metric_keys_and_values:
            if entry.key.is_diff or entry.key.model_name not in ("", "candidate"):
                continue
            if entry.value.HasField("double_value"):
                metrics[entry.key.name] = entry.value.double_value.value
    return metrics


def build_summary(records: dict[str, NodeRecord]) -> dict[str, Any]:
    """The run summary: examples, classes, skipped files, metrics, blessing and the
    gate checks behind it (see `pipeline.evaluation`), push."""
    examples = _single(records.get(pipeline_def.EXAMPLE_GEN), "examples")
    ingest = {}
    if examples is not None:
        summary_path = os.path.join(examples.uri, image_folder_example_gen.SUMMARY_FILE)
        if tf.io.gfile.exists(summary_path):
            with tf.io.gfile.GFile(summary_path) as f:
                ingest = json.load(f)
    checked_schema = _single(records.get(pipeline_def.DATA_GATE), data_gate.CHECKED_SCHEMA_KEY)
    gate_report = json.loads(_custom_string(checked_schema, data_gate.REPORT_PROPERTY) or "{}") if (
        checked_schema is not None) else {}
    statistics = _single(records.get(pipeline_def.STATISTICS_GEN), "statistics")
    evaluation = _single(records.get(pipeline_def.EVALUATOR), "evaluation")
    blessing = _single(records.get(pipeline_def.EVALUATOR), "blessing")
    pushed = _single(records.get(pipeline_def.PUSHER), "pushed_model")
    blessed = bool(blessing is not None and _custom_int(blessing, "blessed") == 1)
    model = _single(records.get(pipeline_def.TRAINER), "model")
    metrics, gate = {}, {}
    if evaluation is not None:
        metrics = evaluation_lib.read_metrics(evaluation.uri, _class_names(model))
        gate = evaluation_lib.read_gate(evaluation.uri, blessed)
    return {
        "examples": examples_per_split(statistics.uri) if statistics is not None else {},
        "classes": sorted(ingest.get("images_per_class", {})),
        "images_per_class": ingest.get("images_per_class", {}),
        "files": {"seen": ingest.get("files_seen", 0), **ingest.get("by_status", {})},
        "skipped": [
            {"path": row["path"], "reason": row["reason"]} for row in ingest.get("not_used", [])
        ],
        "span": ingest.get("span", 0),
        "warnings": ingest.get("warnings", []) + gate_report.get("warnings", []),
        "data_gate": {
            key: gate_report[key] for key in ("compared_span", "label_drift") if key in gate_report
        },
        "metrics": metrics,
        "blessed": blessed,
        "gate": gate,
        "pushed_model": _pushed_model_dir(pushed),
        "pushed_this_run": bool(pushed is not None and _custom_int(pushed, "pushed") == 1),
        "steps": {node_id: record.state for node_id, record in records.items()},
    }


def _class_names(model: metadata_store_pb2.Artifact | None) -> list[str]:
    """The trained model's classes in output order; empty if they cannot be read."""
    if model is None:
        return []
    try:
        return export.read_class_names(path_utils.serving_model_path(model.uri))
    except FileNotFoundError:
        return []


def _pushed_model_dir(pushed: metadata_store_pb2.Artifact | None) -> str | None:
    """The version directory serving this run's model, pushed now or before."""
    if pushed is None:
        return None
    if _custom_int(pushed, "pushed") == 1 or (
        _custom_int(pushed, serving_pusher.ALREADY_SERVING_PROPERTY) is not None
    ):
        return _custom_string(pushed, "pushed_destination")
    return None
