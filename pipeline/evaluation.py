"""What the Evaluator measured and decided, read back from its TFMA output.

`read_metrics` gives the candidate's overall accuracy, top-k accuracy (when the
model has more than k classes), per-class precision and recall, and the
confusion matrix; `read_gate` gives the blessing decision with every check of
the gate: the metric, the slice, the candidate's value, the baseline's, the
threshold and whether it passed. Both go into `run_summary.json`.
"""

from __future__ import annotations

from typing import Any

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.slicer import slicer_lib
from tensorflow_model_analysis.writers import eval_config_writer

from pipeline import pipeline as pipeline_def

OVERALL = "Overall"
CANDIDATE = "candidate"
BASELINE = "baseline"
CONFUSION_MATRIX_PLOT = "multi_class_confusion_matrix_plot"

_Values = dict[tuple[str, str, str, bool], float]  # (slice, metric, model, is_diff) -> value


def slice_name(slice_key: Any) -> str:
    """`Overall`, or `column:value` pairs joined by `, ` (e.g. `label:cat`)."""
    if not slice_key:
        return OVERALL
    parts = []
    for column, value in slice_key:
        parts.append(f"{column}:{value.decode() if isinstance(value, bytes) else value}")
    return ", ".join(parts)


def _model_role(model_name: str) -> str:
    return BASELINE if model_name == BASELINE else CANDIDATE


def _metric_values(evaluation_uri: str) -> tuple[_Values, dict[str, int]]:
    """Every scalar metric by (slice, name, model, is_diff); top-k of each metric name."""
    values: _Values = {}
    top_k: dict[str, int] = {}
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        if metrics_for_slice.HasField("cross_slice_key"):
            continue
        name = slice_name(slicer_lib.deserialize_slice_key(metrics_for_slice.slice_key))
        for entry in metrics_for_slice.metric_keys_and_values:
            if not entry.value.HasField("double_value"):
                continue
            key = metric_types.MetricKey.from_proto(entry.key)
            if key.sub_key is not None and key.sub_key.top_k is not None:
                top_k[key.name] = key.sub_key.top_k
            role = _model_role(key.model_name)
            values[(name, key.name, role, key.is_diff)] = entry.value.double_value.value
    return values, top_k


def confusion_matrix(evaluation_uri: str, num_classes: int) -> list[list[int]]:
    """Overall confusion matrix of the candidate: counts[true class][predicted class]."""
    counts = [[0] * num_classes for _ in range(num_classes)]
    for plots_for_slice in tfma.load_plots(evaluation_uri):
        if plots_for_slice.slice_key.single_slice_keys or plots_for_slice.HasField(
            "cross_slice_key"
        ):
            continue
        for entry in plots_for_slice.plot_keys_and_values:
            if entry.key.name != CONFUSION_MATRIX_PLOT or _model_role(
                entry.key.model_name
            ) != CANDIDATE:
                continue
            matrices = entry.value.multi_class_confusion_matrix_at_thresholds.matrices
            for cell in matrices[0].entries if matrices else ():
                actual, predicted = cell.actual_class_id, cell.predicted_class_id
                if 0 <= actual < num_classes and 0 <= predicted < num_classes:
                    counts[actual][predicted] += round(cell.num_weighted_examples)
    return counts


def read_metrics(evaluation_uri: str, class_names: list[str]) -> dict[str, Any]:
    """The candidate's metrics: overall, top-k, per class, and the confusion matrix.

    Args:
        evaluation_uri: The Evaluator's `evaluation` artifact.
        class_names: The model's classes in output order (`export.read_class_names`).
    """
    values, top_k = _metric_values(evaluation_uri)
    metrics: dict[str, Any] = {}
    accuracy = values.get((OVERALL, pipeline_def.ACCURACY_METRIC, CANDIDATE, False))
    if accuracy is not None:
        metrics["accuracy"] = accuracy
    k = top_k.get(pipeline_def.TOP_K_ACCURACY_METRIC)
    top_k_accuracy = values.get((OVERALL, pipeline_def.TOP_K_ACCURACY_METRIC, CANDIDATE, False))
    if k is not None and top_k_accuracy is not None and len(class_names) > k:
        metrics["top_k_accuracy"] = {"k": k, "value": top_k_accuracy}
    count = values.get((OVERALL, "example_count", CANDIDATE, False))
    if count is not None:
        metrics["examples"] = int(count)
    if class_names:
        counts = confusion_matrix(evaluation_uri, len(class_names))
        metrics["per_class"] = _per_class(class_names, counts)
        metrics["confusion_matrix"] = {"classes": class_names, "counts": counts}
    return metrics


def _per_class(class_names: list[str], counts: list[list[int]]) -> dict[str, dict]:
    predicted = [sum(row[j] for row in counts) for j in range(len(class_names))]
    result = {}
    for i, name in enumerate(class_names):
        examples, correct = sum(counts[i]), counts[i][i]
        result[name] = {
            "precision": correct / predicted[i] if predicted[i] else None,
            "recall": correct / examples if examples else None,
            "examples": examples,
        }
    return result


def read_gate(evaluation_uri: str, blessed: bool) -> dict[str, Any]:
    """The blessing decision and each threshold check that made it.

    Each check: `metric`, `slice`, `kind` (`lower_bound` or `change`),
    `value` (the candidate's), `baseline` (the baseline model's, for a change
    check), `threshold` (the lowest passing value), `passed`; a change check
    also has `max_drop`.
    """
    eval_config = eval_config_writer.load_eval_run(evaluation_uri)[0]
    values, _ = _metric_values(evaluation_uri)
    failed = _failed_checks(evaluation_uri)
    slices = sorted({key[0] for key in values}, key=lambda name: (name != OVERALL, name))
    checks = []
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(
        eval_config.metrics_specs, eval_config=eval_config
    )
    for key, slice_thresholds in thresholds.items():
        if _model_role(key.model_name) != CANDIDATE:
            continue
        for slicing_spec, threshold in slice_thresholds:
            for name in slices:
                if not _applies(slicing_spec, name):
                    continue
                check = _check(key, name, threshold, values, failed)
                if check is not None:
                    checks.append(check)
    checks.sort(key=lambda c: (c["slice"] != OVERALL, c["slice"], c["metric"], c["kind"]))
    return {
        "blessed": blessed,
        "baseline": any(key[2] == BASELINE for key in values),
        "checks": checks,
    }


def _applies(slicing_spec: Any, name: str) -> bool:
    """Whether a threshold's slicing spec (None: every slice) covers the slice `name`."""
    if slicing_spec is None:
        return True
    spec = tfma.SlicingSpec()
    spec.CopyFrom(slicing_spec)
    if not spec.feature_keys and not spec.feature_values:
        return name == OVERALL
    columns = {part.split(":", 1)[0] for part in name.split(", ")} if name != OVERALL else set()
    return columns == set(spec.feature_keys) | set(spec.feature_values)


def _check(key, name: str, threshold: Any, values: _Values, failed: set) -> dict | None:
    value = values.get((name, key.name, CANDIDATE, False))
    passed = (name, key.name, key.is_diff) not in failed
    if isinstance(threshold, tfma.GenericValueThreshold):
        if not threshold.HasField("lower_bound"):
            return None
        return {
            "metric": key.name, "slice": name, "kind": "lower_bound", "value": value,
            "threshold": threshold.lower_bound.value, "passed": passed,
        }
    baseline = values.get((name, key.name, BASELINE, False))
    if baseline is None:  # no baseline model: change thresholds are not checked
        return None
    max_drop = round(-threshold.absolute.value, 9)
    return {
        "metric": key.name, "slice": name, "kind": "change", "value": value,
        "baseline": baseline, "change": values.get((name, key.name, CANDIDATE, True)),
        "max_drop": max_drop, "threshold": baseline - max_drop, "passed": passed,
    }


def _failed_checks(evaluation_uri: str) -> set[tuple[str, str, bool]]:
    """(slice, metric, is_diff) of every failed threshold."""
    failed = set()
    for per_slice in tfma.load_validation_result(evaluation_uri).metric_validations_per_slice:
        name = slice_name(slicer_lib.deserialize_slice_key(per_slice.slice_key))
        for failure in per_slice.failures:
            failed.add((name, failure.metric_key.name, failure.metric_key.is_diff))
    return failed


def failing_checks(gate: dict[str, Any]) -> list[str]:
    """One line per failed check, e.g. for the command's closing report."""
    lines = []
    for check in gate.get("checks", []):
        if check["passed"]:
            continue
        value = "missing" if check["value"] is None else f"{check['value']:.4f}"
        if check["kind"] == "change":
            lines.append(
                f"{check['metric']} on {check['slice']}: {value}, down from the baseline's "
                f"{check['baseline']:.4f} by more than {check['max_drop']:g}"
            )
        else:
            lines.append(
                f"{check['metric']} on {check['slice']}: {value} < {check['threshold']:g}"
            )
    return lines

