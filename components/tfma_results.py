"""What the Evaluator measured and decided: the one reader of its TFMA output.

`read_evaluation` gives an `Evaluation`: the candidate's overall accuracy, top-k
accuracy, example count, the confusion matrix (hence per-class precision and
recall), every scalar metric of every slice for candidate and baseline, and each
threshold check of the gate with its outcome. The Pusher's model card, the run
summary, the report and the report's model cards all read it here, so they
cannot disagree about the same evaluation.

The thresholds are those of the EvalConfig the pipeline gave the Evaluator when
the caller has it (TFX drops change thresholds from the config it records when
there is no baseline, and the gate should still say that the no-regression
bound exists but had nothing to compare against), else the recorded one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow_model_analysis as tfma
from google.protobuf import json_format
from tensorflow_model_analysis.metrics import metric_specs, metric_types
from tensorflow_model_analysis.slicer import slicer_lib
from tensorflow_model_analysis.writers import eval_config_writer

from components.eval_config import ACCURACY_METRIC, TOP_K_ACCURACY_METRIC

OVERALL = "Overall"
"""The name of the whole eval split's slice."""
CANDIDATE = "candidate"
BASELINE = "baseline"
LOWER_BOUND = "lower_bound"
UPPER_BOUND = "upper_bound"
CHANGE = "change"
NOT_APPLIED = "not applied: no baseline yet"
_CONFUSION_MATRIX_PLOT = "multi_class_confusion_matrix_plot"
_EXAMPLE_COUNT = "example_count"
_CANDIDATE_MODEL_NAMES = ("", CANDIDATE)

_ValueKey = tuple[str, str, str, bool]  # (slice, metric name, role, is_diff)


@dataclasses.dataclass(frozen=True)
class ThresholdCheck:
    """One threshold of the gate on one slice, the values it was checked on, its outcome.

    Attributes:
        metric: The metric's name (with its sub key, except accuracy's top-1).
        slice: `Overall` or `column:value` (e.g. `label:cat`).
        kind: `lower_bound`, `upper_bound` (absolute bounds) or `change`
            (against the baseline model).
        value: The candidate's value; None if TFMA recorded none.
        threshold: The passing limit: the bound, or for a change check the
            lowest passing value (baseline - max_drop); None without a baseline.
        passed: Whether it passed; None when not applied (a change check
            without a baseline model).
        baseline: The baseline model's value (change checks).
        change: Candidate minus baseline (change checks).
        max_drop: The largest accepted drop (change checks).
    """

    metric: str
    slice: str
    kind: str
    value: float | None
    threshold: float | None
    passed: bool | None
    baseline: float | None = None
    change: float | None = None
    max_drop: float | None = None

    @property
    def threshold_type(self) -> str:
        """TFMA's kind of threshold: "value" (absolute) or "change"."""
        return CHANGE if self.kind == CHANGE else "value"

    @property
    def requirement(self) -> str:
        """The bound in words, e.g. `>= 0.5000` or `change >= -0.0100`."""
        if self.kind == CHANGE:
            return f"change >= {-(self.max_drop or 0.0):+.4f}"
        sign = ">=" if self.kind == LOWER_BOUND else "<="
        return f"{sign} {self.threshold:.4f}"

    @property
    def outcome(self) -> str:
        """`pass`, `FAIL`, or why the check was not applied."""
        if self.passed is None:
            return NOT_APPLIED
        if not self.passed:
            return "FAIL"
        return "pass" if self.value is not None else "no value recorded"

    def failure_line(self) -> str:
        """One line saying why the check failed, e.g. for the command's closing report."""
        value = "missing" if self.value is None else f"{self.value:.4f}"
        if self.kind == CHANGE:
            return (
                f"{self.metric} on {self.slice}: {value}, down from the baseline's "
                f"{self.baseline:.4f} by more than {self.max_drop:g}"
            )
        sign = "<" if self.kind == LOWER_BOUND else ">"
        return f"{self.metric} on {self.slice}: {value} {sign} {self.threshold:g}"

    def to_json(self) -> dict[str, Any]:
        """The check as `run_summary.json` records it (see the README)."""
        record: dict[str, Any] = {
            "metric": self.metric, "slice": self.slice, "kind": self.kind, "value": self.value,
        }
        if self.kind == CHANGE:
            record.update(baseline=self.baseline, change=self.change, max_drop=self.max_drop)
        record.update(threshold=self.threshold, passed=self.passed)
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ThresholdCheck:
        """The check from its `to_json` form."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in names})


@dataclasses.dataclass(frozen=True)
class MetricRow:
    """One scalar metric on one slice: candidate, baseline, and their difference."""

    slice: str
    metric: str
    candidate: float | None
    baseline: float | None
    diff: float | None


@dataclasses.dataclass(frozen=True)
class ClassScore:
    """One class on the eval split; None where undefined (nothing predicted or present)."""

    name: str
    support: int
    precision: float | None
    recall: float | None


@dataclasses.dataclass(frozen=True)
class TopK:
    """Top-k accuracy: the share of eval images whose class is among the k best scores."""

    k: int
    value: float


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What the Evaluator measured on the candidate (and the baseline) and decided.

    Attributes:
        accuracy: Overall top-1 accuracy; None if not recorded.
        top_k: Top-k accuracy, when the model has more than k classes.
        examples: Eval examples counted.
        class_names: The model's classes in output order.
        confusion: confusion[true class][predicted class], indexed like `class_names`.
        has_baseline: Whether a baseline model was evaluated beside the candidate.
        checks: Every threshold check, Overall first.
        failures: TFMA's message for each failed threshold.
        rows: Every scalar metric per slice, Overall first.
    """

    accuracy: float | None
    top_k: TopK | None
    examples: int | None
    class_names: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    has_baseline: bool
    checks: tuple[ThresholdCheck, ...]
    failures: tuple[str, ...]
    rows: tuple[MetricRow, ...]

    @property
    def per_class(self) -> tuple[ClassScore, ...]:
        """Precision, recall and eval images of each class, from the confusion matrix."""
        scores = []
        for i, name in enumerate(self.class_names):
            support = sum(self.confusion[i])
            predicted = sum(row[i] for row in self.confusion)
            correct = self.confusion[i][i]
            scores.append(ClassScore(
                name, support,
                correct / predicted if predicted else None,
                correct / support if support else None,
            ))
        return tuple(scores)

    def metrics_json(self) -> dict[str, Any]:
        """`run_summary.json`'s `metrics`: accuracy, top-k, examples, per class, confusion."""
        metrics: dict[str, Any] = {}
        if self.accuracy is not None:
            metrics["accuracy"] = self.accuracy
        if self.top_k is not None:
            metrics["top_k_accuracy"] = {"k": self.top_k.k, "value": self.top_k.value}
        if self.examples is not None:
            metrics["examples"] = self.examples
        if self.class_names:
            metrics["per_class"] = {
                score.name: {
                    "precision": score.precision, "recall": score.recall,
                    "examples": score.support,
                }
                for score in self.per_class
            }
            metrics["confusion_matrix"] = {
                "classes": list(self.class_names),
                "counts": [list(row) for row in self.confusion],
            }
        return metrics

    def gate_json(self, blessed: bool) -> dict[str, Any]:
        """`run_summary.json`'s `gate`: the decision and each check that was applied."""
        return {
            "blessed": blessed,
            "baseline": self.has_baseline,
            "checks": [check.to_json() for check in self.checks if check.passed is not None],
        }


def read_evaluation(
    evaluation_uri: str,
    class_names: Sequence[str] = (),
    eval_config: tfma.EvalConfig | str | None = None,
) -> Evaluation:
    """Reads the Evaluator's `evaluation` output.

    Args:
        evaluation_uri: The Evaluator's `evaluation` artifact.
        class_names: The model's classes in output order
            (`trainer.export.read_class_names`); empty leaves the confusion
            matrix and per-class figures out.
        eval_config: The EvalConfig the pipeline gave the Evaluator (a proto,
            or its JSON as TFX records it in the execution's properties); None
            reads the one the Evaluator recorded.
    """
    values, top_k, slices = _metric_values(evaluation_uri)
    failures = _failures(evaluation_uri)
    config = _eval_config(evaluation_uri, eval_config)
    has_baseline = any(key[2] == BASELINE for key in values)
    accuracy = values.get((OVERALL, ACCURACY_METRIC, CANDIDATE, False))
    examples = values.get((OVERALL, _EXAMPLE_COUNT, CANDIDATE, False))
    top_k_metric = top_k.get(TOP_K_ACCURACY_METRIC)
    top_k_value = top_k_metric and values.get((OVERALL, top_k_metric[0], CANDIDATE, False))
    return Evaluation(
        accuracy=accuracy,
        top_k=(
            TopK(top_k_metric[1], top_k_value)
            if top_k_value is not None and len(class_names) > top_k_metric[1] else None
        ),
        examples=None if examples is None else int(examples),
        class_names=tuple(class_names),
        confusion=_confusion_matrix(evaluation_uri, len(class_names)),
        has_baseline=has_baseline,
        checks=_threshold_checks(config, values, slices, failures, has_baseline),
        failures=tuple(message for *_, message in failures),
        rows=_metric_rows(values),
    )


def slice_name(slice_key: Any) -> str:
    """`Overall`, or `column:value` pairs joined by `, ` (e.g. `label:cat`)."""
    if not slice_key:
        return OVERALL
    return ", ".join(
        f"{column}:{value.decode() if isinstance(value, bytes) else value}"
        for column, value in slice_key
    )


def metric_name(key: metric_types.MetricKey) -> str:
    """The metric's name, with its sub key, except top-1 for accuracy, which defines it."""
    if key.name == ACCURACY_METRIC and key.sub_key == metric_types.SubKey(top_k=1):
        return key.name
    return f"{key.name} [{key.sub_key}]" if key.sub_key else key.name


def _role(model_name: str) -> str | None:
    if model_name in _CANDIDATE_MODEL_NAMES:
        return CANDIDATE
    return BASELINE if model_name == BASELINE else None


def _metric_values(
    evaluation_uri: str,
) -> tuple[dict[_ValueKey, float], dict[str, tuple[str, int]], set[tuple]]:
    """Every scalar metric by (slice, name, role, is_diff); the top-k metrics by base
    name, as (full name, k); and the slice keys seen."""
    values: dict[_ValueKey, float] = {}
    top_k: dict[str, tuple[str, int]] = {}
    slices: set[tuple] = set()
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        if metrics_for_slice.HasField("cross_slice_key"):
            continue
        slice_key = slicer_lib.deserialize_slice_key(metrics_for_slice.slice_key)
        slices.add(slice_key)
        for entry in metrics_for_slice.metric_keys_and_values:
            key = metric_types.MetricKey.from_proto(entry.key)
            role = _role(key.model_name)
            if role is None or not entry.value.HasField("double_value"):
                continue
            name = metric_name(key)
            if key.sub_key is not None and key.sub_key.top_k is not None:
                top_k[key.name] = (name, key.sub_key.top_k)
            values[(slice_name(slice_key), name, role, key.is_diff)] = (
                entry.value.double_value.value
            )
    return values, top_k, slices


def _confusion_matrix(evaluation_uri: str, num_classes: int) -> tuple[tuple[int, ...], ...]:
    """The candidate's overall confusion matrix: counts[true class][predicted class]."""
    counts = [[0] * num_classes for _ in range(num_classes)]
    if not num_classes:
        return ()
    for plots_for_slice in tfma.load_plots(evaluation_uri):
        if plots_for_slice.slice_key.single_slice_keys or plots_for_slice.HasField(
            "cross_slice_key"
        ):
            continue
        for entry in plots_for_slice.plot_keys_and_values:
            if entry.key.name != _CONFUSION_MATRIX_PLOT or _role(entry.key.model_name) != CANDIDATE:
                continue
            matrices = entry.value.multi_class_confusion_matrix_at_thresholds.matrices
            for cell in matrices[0].entries if matrices else ():
                actual, predicted = cell.actual_class_id, cell.predicted_class_id
                if 0 <= actual < num_classes and 0 <= predicted < num_classes:
                    counts[actual][predicted] += round(cell.num_weighted_examples)
    return tuple(tuple(row) for row in counts)


def _failures(evaluation_uri: str) -> list[tuple[str, str, bool, str]]:
    """(slice, metric, is_diff, message) for each failed threshold."""
    failures = []
    for per_slice in tfma.load_validation_result(evaluation_uri).metric_validations_per_slice:
        name = slice_name(slicer_lib.deserialize_slice_key(per_slice.slice_key))
        for failure in per_slice.failures:
            key = metric_types.MetricKey.from_proto(failure.metric_key)
            message = failure.message or (
                f"{metric_name(key)}{' change' if key.is_diff else ''} = "
                f"{failure.metric_value.double_value.value:.4f} on {name} fails "
                f"{json_format.MessageToDict(failure.metric_threshold)}"
            )
            failures.append((name, metric_name(key), key.is_diff, message))
    return failures


def _eval_config(
    evaluation_uri: str, eval_config: tfma.EvalConfig | str | None
) -> tfma.EvalConfig:
    if isinstance(eval_config, tfma.EvalConfig):
        return eval_config
    if isinstance(eval_config, str) and eval_config:
        return json_format.Parse(eval_config, tfma.EvalConfig())
    return eval_config_writer.load_eval_run(evaluation_uri)[0]


def _threshold_checks(
    eval_config: tfma.EvalConfig,
    values: Mapping[_ValueKey, float],
    slices: set[tuple],
    failures: Sequence[tuple[str, str, bool, str]],
    has_baseline: bool,
) -> tuple[ThresholdCheck, ...]:
    failed = {(name, metric, is_diff) for name, metric, is_diff, _ in failures}
    checks = []
    thresholds = metric_specs.metric_thresholds_from_metrics_specs(
        eval_config.metrics_specs, eval_config=eval_config
    )
    for key, slice_thresholds in thresholds.items():
        if _role(key.model_name) != CANDIDATE:
            continue
        metric = metric_name(key)
        for slicing_spec, threshold in slice_thresholds:
            for name in map(slice_name, _matching_slices(slicing_spec, slices)):
                value = values.get((name, metric, CANDIDATE, False))
                passed = (name, metric, key.is_diff) not in failed
                if isinstance(threshold, tfma.GenericChangeThreshold):
                    checks.append(_change_check(
                        metric, name, threshold, values, passed if has_baseline else None
                    ))
                else:
                    checks.extend(_value_checks(metric, name, threshold, value, passed))
    return tuple(sorted(
        checks, key=lambda c: (c.slice != OVERALL, c.slice, c.metric, c.kind == CHANGE)
    ))


def _value_checks(
    metric: str, name: str, threshold: tfma.GenericValueThreshold, value: float | None,
    passed: bool,
) -> list[ThresholdCheck]:
    """A check per bound."""
    return [
        ThresholdCheck(metric, name, kind, value, getattr(threshold, field).value, passed)
        for kind, field in ((LOWER_BOUND, "lower_bound"), (UPPER_BOUND, "upper_bound"))
        if threshold.HasField(field)
    ]


def _change_check(
    metric: str, name: str, threshold: tfma.GenericChangeThreshold,
    values: Mapping[_ValueKey, float], passed: bool | None,
) -> ThresholdCheck:
    """An absolute change check (the gate's no-regression bound)."""
    baseline = values.get((name, metric, BASELINE, False))
    max_drop = round(-threshold.absolute.value, 9)
    return ThresholdCheck(
        metric, name, CHANGE,
        value=values.get((name, metric, CANDIDATE, False)),
        threshold=None if baseline is None else baseline - max_drop,
        passed=passed if baseline is not None else None,
        baseline=baseline,
        change=values.get((name, metric, CANDIDATE, True)),
        max_drop=max_drop,
    )


def _matching_slices(slicing_spec: Any, slices: set[tuple]) -> list[tuple]:
    """The slice keys a threshold's slicing spec covers (None: the whole split)."""
    if slicing_spec is None or not isinstance(slicing_spec, tfma.SlicingSpec):
        return [()]
    single = slicer_lib.SingleSliceSpec(spec=slicing_spec)
    matching = sorted((s for s in slices if single.is_slice_applicable(s)), key=str)
    return matching or ([()] if single.is_overall() else [])


def _metric_rows(values: Mapping[_ValueKey, float]) -> tuple[MetricRow, ...]:
    names = sorted(
        {(name, metric) for name, metric, _, _ in values},
        key=lambda item: (item[0] != OVERALL, item),
    )
    return tuple(
        MetricRow(
            name, metric,
            values.get((name, metric, CANDIDATE, False)),
            values.get((name, metric, BASELINE, False)),
            values.get((name, metric, CANDIDATE, True)),
        )
        for name, metric in names
    )
