"""`run_summary.json`: what a pipeline run did, from its ML Metadata record and artifacts.

The shape is the README's: the run's id (its ML Metadata run name, what
`transferline report --run` takes), examples per split, classes, every file not
used with its reason, the Evaluator's metrics and gate (read by
`components.tfma_results`), the blessing and the push.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx.types import standard_component_specs as keys
from tfx.utils import path_utils

from components import (
    data_gate,
    image_folder_example_gen,
    served_model,
    serving_pusher,
    tfma_results,
)
from pipeline import pipeline as pipeline_def
from pipeline.reporting.runs import RunRecord
from trainer import export

SUMMARY_FILE = "run_summary.json"


def read_evaluation(run: RunRecord) -> tfma_results.Evaluation | None:
    """The run's Evaluator results, judged by the EvalConfig it was given; None without them."""
    evaluation = run.output(pipeline_def.EVALUATOR, keys.EVALUATION_KEY)
    if evaluation is None or not tf.io.gfile.isdir(evaluation.uri):
        return None
    evaluator = run.execution(pipeline_def.EVALUATOR)
    return tfma_results.read_evaluation(
        evaluation.uri, class_names(run), evaluator.properties.get(keys.EVAL_CONFIG_KEY)
    )


def class_names(run: RunRecord) -> list[str]:
    """The trained model's classes in output order; empty if they cannot be read."""
    model = run.output(pipeline_def.TRAINER, keys.MODEL_KEY)
    if model is None:
        return []
    try:
        return export.read_class_names(path_utils.serving_model_path(model.uri))
    except FileNotFoundError:
        return []


def is_blessed(run: RunRecord) -> bool:
    blessing = run.output(pipeline_def.EVALUATOR, keys.BLESSING_KEY)
    return blessing is not None and serving_pusher.blessing_facts(blessing.properties)[0] is True


def build_summary(
    run: RunRecord, evaluation: tfma_results.Evaluation | None = None
) -> dict[str, Any]:
    """The run summary: examples, classes, skipped files, metrics, blessing and the
    gate checks behind it, push.

    Args:
        run: The run's record.
        evaluation: Its Evaluator results, when the caller has read them
            (`read_evaluation`); otherwise read here.
    """
    evaluation = evaluation or read_evaluation(run)
    ingest = _ingest_summary(run)
    gate_report = _data_gate_report(run)
    statistics = run.output(pipeline_def.STATISTICS_GEN, keys.STATISTICS_KEY)
    pushed = run.output(pipeline_def.PUSHER, keys.PUSHED_MODEL_KEY)
    blessed = is_blessed(run)
    return {
        "run_id": run.name,
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
        "metrics": evaluation.metrics_json() if evaluation else {},
        "blessed": blessed,
        "gate": evaluation.gate_json(blessed) if evaluation else {},
        "baseline": baseline_summary(run),
        "pushed_model": serving_pusher.serving_version_dir(pushed.properties) if pushed else None,
        "pushed_this_run": pushed is not None and serving_pusher.pushed_now(pushed.properties),
        "steps": {execution.node_id: execution.state for execution in run.executions},
    }


NO_BASELINE_CONFIGURED = "no baseline (--no-baseline): absolute bounds only"
NOTHING_SERVED = "no model was being served: absolute bounds only"


def baseline_summary(run: RunRecord) -> dict[str, Any]:
    """What the candidate was compared with: the served version, or why nothing.

    {"served_version": N, "from": the version's folder} when the Evaluator had a
    served version as its baseline; otherwise both None and a `note`.
    """
    baseline = run.input(pipeline_def.EVALUATOR, keys.BASELINE_MODEL_KEY)
    version = served_model.served_version(baseline.properties) if baseline else None
    if version is not None:
        return {"served_version": version,
                "from": baseline.properties.get(served_model.SERVED_FROM_PROPERTY)}
    note = NOTHING_SERVED if baseline or run.execution(pipeline_def.SERVING_BASELINE) else (
        NO_BASELINE_CONFIGURED)
    return {"served_version": None, "from": None, "note": note}


def failing_checks(gate: Mapping[str, Any]) -> list[str]:
    """One line per failed check of a summary's `gate`, e.g. for the command's closing report."""
    return [
        tfma_results.ThresholdCheck.from_json(check).failure_line()
        for check in gate.get("checks", [])
        if check["passed"] is False
    ]


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


def _ingest_summary(run: RunRecord) -> dict[str, Any]:
    examples = run.output(pipeline_def.EXAMPLE_GEN, keys.EXAMPLES_KEY)
    if examples is None:
        return {}
    path = os.path.join(examples.uri, image_folder_example_gen.SUMMARY_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _data_gate_report(run: RunRecord) -> dict[str, Any]:
    checked_schema = run.output(pipeline_def.DATA_GATE, data_gate.CHECKED_SCHEMA_KEY)
    if checked_schema is None:
        return {}
    return json.loads(checked_schema.properties.get(data_gate.REPORT_PROPERTY) or "{}")
