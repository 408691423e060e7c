"""DataGate: a TFX component that stops the pipeline before training when the data is unfit.

TFX's ExampleValidator records anomalies but never stops a run. DataGate runs
after it and passes the schema on to Transform and the Trainer only when the
data is fit; otherwise it fails with one message naming every problem, so
nothing downstream runs:

* too few examples (fewer than `min_examples` in all splits together), or an
  empty split;
* anomalies ExampleValidator found;
* a class the schema lists (TFDV's label domain) with no training examples;
* a class of the previous span with no examples in this one;
* a label distribution far from the previous span's: TFDV's L-infinity drift
  comparator on the label feature, against that span's statistics.

The previous span's statistics come from ML Metadata (see
`pipeline/pipeline.py`): the latest statistics of the largest span below this
one. Without spans there is no previous span, and only the other checks run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf
import tensorflow_data_validation as tfdv
from absl import logging
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2
from tfx import types
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils

from components.config import IngestConfig
from trainer import features

STATISTICS_KEY = "statistics"
SCHEMA_KEY = "schema"
ANOMALIES_KEY = "anomalies"
PREVIOUS_STATISTICS_KEY = "previous_statistics"
CHECKED_SCHEMA_KEY = "checked_schema"
MIN_EXAMPLES_KEY = "min_examples"
MAX_LABEL_DRIFT_KEY = "max_label_drift"
LABEL_FEATURE_KEY = "label_feature"
REPORT_PROPERTY = "data_gate_report"
"""Custom property of the checked schema: the gate's report as JSON."""

SCHEMA_FILE = "schema.pbtxt"
_ANOMALIES_FILE = "SchemaDiff.pb"  # What ExampleValidator writes per split.


class DataGateError(RuntimeError):
    """The data is unfit to train on; the message names every problem on one line."""


@dataclasses.dataclass(frozen=True)
class GateReport:
    """What the gate found.

    Attributes:
        span: The span checked.
        examples_per_split: Example counts by split.
        label_counts: Examples per class, by split.
        compared_span: The previous span compared with, or None.
        label_drift: L-infinity distance between this span's and the previous
            span's training label distributions, or None without a previous span.
        problems: Why the data is unfit; empty when it is fit.
        warnings: What is worth knowing but does not stop the run.
    """

    span: int
    examples_per_split: dict[str, int]
    label_counts: dict[str, dict[str, int]]
    compared_span: int | None
    label_drift: float | None
    problems: list[str]
    warnings: list[str]

    @property
    def fit(self) -> bool:
        """Whether training may go on."""
        return not self.problems

    def message(self) -> str:
        """One line naming every problem."""
        return "data gate stopped the run: " + "; ".join(self.problems)


def label_counts(
    statistics: statistics_pb2.DatasetFeatureStatisticsList, label_feature: str
) -> dict[str, int]:
    """Examples per label value, from TFDV's rank histogram of the label feature."""
    counts: dict[str, int] = {}
    for dataset in statistics.datasets:
        for feature in dataset.features:
            name = feature.path.step[0] if feature.path.step else feature.name
            if name != label_feature:
                continue
            for bucket in feature.string_stats.rank_histogram.buckets:
                counts[bucket.label] = counts.get(bucket.label, 0) + int(bucket.sample_count)
    return dict(sorted(counts.items()))


def _num_examples(statistics: statistics_pb2.DatasetFeatureStatisticsList) -> int:
    return sum(dataset.num_examples for dataset in statistics.datasets)


def _schema_classes(schema: schema_pb2.Schema, label_feature: str) -> list[str] | None:
    """The label domain the schema lists, or None if it lists none."""
    try:
        domain = tfdv.get_domain(schema, label_feature)
    except ValueError:
        return None
    if not isinstance(domain, schema_pb2.StringDomain):
        return None
    return sorted(domain.value)


def _validator_problems(anomalies: dict[str, anomalies_pb2.Anomalies]) -> list[str]:
    problems = []
    for split, found in sorted(anomalies.items()):
        for feature, info in sorted(found.anomaly_info.items()):
            problems.append(f"ExampleValidator: split {split}, feature {feature}: "
                            f"{info.short_description or info.description}")
        if found.HasField("dataset_anomaly_info"):
            info = found.dataset_anomaly_info
            problems.append(f"ExampleValidator: split {split}: "
                            f"{info.short_description or info.description}")
    return problems


def label_drift(
    current: statistics_pb2.DatasetFeatureStatisticsList,
    previous: statistics_pb2.DatasetFeatureStatisticsList,
    schema: schema_pb2.Schema,
    label_feature: str,
    max_label_drift: float,
) -> tuple[float, str, bool]:
    """TFDV's L-infinity drift comparator on the label feature.

    Returns:
        (distance, description, over the threshold). The description is TFDV's.
    """
    with_comparator = schema_pb2.Schema()
    with_comparator.CopyFrom(schema)
    comparator = tfdv.get_feature(with_comparator, label_feature).drift_comparator
    comparator.infinity_norm.threshold = max_label_drift
    found = tfdv.validate_statistics(
        statistics=current, schema=with_comparator, previous_statistics=previous
    )
    distance = 0.0
    for info in found.drift_skew_info:
        if list(info.path.step) == [label_feature]:
            for measurement in info.drift_measurements:
                if measurement.type == anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY:
                    distance = measurement.value
    anomaly = found.anomaly_info.get(label_feature)
    drifted = anomaly is not None and any(
        reason.type == anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH
        for reason in anomaly.reason
    )
    description = next(
        (reason.description for reason in anomaly.reason
         if reason.type == anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH),
        "",
    ) if anomaly is not None else ""
    return distance, description, drifted


def evaluate(
    *,
    statistics: dict[str, statistics_pb2.DatasetFeatureStatisticsList],
    schema: schema_pb2.Schema,
    anomalies: dict[str, anomalies_pb2.Anomalies],
    span: int = 0,
    previous: statistics_pb2.DatasetFeatureStatisticsList | None = None,
    previous_span: int | None = None,
    min_examples: int,
    max_label_drift: float,
    label_feature: str = features.LABEL_KEY,
) -> GateReport:
    """Checks the data of one span; pure, so it can be tested on TFDV statistics alone.

    Args:
        statistics: This span's statistics by split (StatisticsGen's output).
        schema: The schema (SchemaGen's output).
        anomalies: ExampleValidator's anomalies by split.
        span: This span's number.
        previous: The previous span's training-split statistics, if any.
        previous_span: Its span number.
        min_examples: Fewest examples, all splits together, to train on.
        max_label_drift: Largest accepted L-infinity distance between this
            span's and the previous span's training label distributions.
        label_feature: The label feature's name.

    Returns:
        The report; `report.fit` says whether training may go on.
    """
    problems: list[str] = []
    warnings: list[str] = []
    ordered = sorted(statistics.items())
    examples_per_split = {split: _num_examples(stats) for split, stats in ordered}
    counts = {split: label_counts(stats, label_feature) for split, stats in ordered}
    total = sum(examples_per_split.values())
    if total < min_examples:
        problems.append(f"too few examples: {total} < min_examples {min_examples}")
    problems += [f"split {split} has no examples"
                 for split, n in examples_per_split.items() if n == 0]
    problems += _validator_problems(anomalies)

    train = counts.get(features.TRAIN_SPLIT, {})
    classes = _schema_classes(schema, label_feature)
    if classes is None:
        classes = sorted({label for split_counts in counts.values() for label in split_counts})
    problems += [f"class {label!r} is in the schema but has no training examples"
                 for label in classes if not train.get(label)]
    if features.EVAL_SPLIT in counts:
        warnings += [f"class {label!r} has no eval examples: its accuracy goes unmeasured"
                     for label in classes
                     if train.get(label) and not counts[features.EVAL_SPLIT].get(label)]

    drift = None
    if previous is not None and features.TRAIN_SPLIT in statistics:
        previous_counts = label_counts(previous, label_feature)
        problems += [f"class {label!r} of span {previous_span} has no examples in span {span}"
                     for label, n in previous_counts.items() if n and not train.get(label)]
        warnings += [f"class {label!r} is new in span {span} (not in span {previous_span})"
                     for label in train if not previous_counts.get(label)]
        drift, description, drifted = label_drift(
            statistics[features.TRAIN_SPLIT], previous, schema, label_feature, max_label_drift
        )
        if drifted:
            problems.append(
                f"label distribution drifted from span {previous_span}: L-infinity distance "
                f"{drift:.3f} > max_label_drift {max_label_drift} (TFDV: {description})"
            )
    return GateReport(
        span=span,
        examples_per_split=examples_per_split,
        label_counts=counts,
        compared_span=previous_span if previous is not None else None,
        label_drift=drift,
        problems=problems,
        warnings=warnings,
    )


# ------------------------------------------------------------------- TFX wiring


def _load_anomalies(artifact: types.Artifact) -> dict[str, anomalies_pb2.Anomalies]:
    """ExampleValidator's anomalies by split."""
    found = {}
    for split in artifact_utils.decode_split_names(artifact.split_names):
        path = os.path.join(artifact_utils.get_split_uri([artifact], split), _ANOMALIES_FILE)
        if tf.io.gfile.exists(path):
            anomalies = anomalies_pb2.Anomalies()
            anomalies.ParseFromString(io_utils.read_bytes_file(path))
            found[split] = anomalies
    return found


def _previous_span(
    candidates: list[types.Artifact], span: int
) -> tuple[types.Artifact | None, int | None]:
    """The statistics of the largest span below `span` (latest artifact of that span)."""
    older = [artifact for artifact in candidates if artifact.span < span]
    if not older:
        return None, None
    best = max(older, key=lambda a: (a.span, a.mlmd_artifact.create_time_since_epoch, a.id))
    return best, best.span


class Executor(base_executor.BaseExecutor):
    """Checks the data; passes the schema on only when it is fit."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        """Raises DataGateError, naming every problem, when the data is unfit."""
        self._log_startup(input_dict, output_dict, exec_properties)
        stats_artifact = artifact_utils.get_single_instance(input_dict[STATISTICS_KEY])
        schema_path = io_utils.get_only_uri_in_dir(
            artifact_utils.get_single_uri(input_dict[SCHEMA_KEY])
        )
        schema = tfdv.load_schema_text(schema_path)
        splits = artifact_utils.decode_split_names(stats_artifact.split_names)
        statistics = {
            split: stats_artifact_utils.load_statistics(stats_artifact, split).proto()
            for split in splits
        }
        anomalies = _load_anomalies(artifact_utils.get_single_instance(input_dict[ANOMALIES_KEY]))
        previous_artifact, previous_span = _previous_span(
            input_dict.get(PREVIOUS_STATISTICS_KEY, []), stats_artifact.span
        )
        previous = None
        train = features.TRAIN_SPLIT
        if previous_artifact is not None and train in artifact_utils.decode_split_names(
            previous_artifact.split_names
        ):
            previous = stats_artifact_utils.load_statistics(previous_artifact, train).proto()
        report = evaluate(
            statistics=statistics,
            schema=schema,
            anomalies=anomalies,
            span=stats_artifact.span,
            previous=previous,
            previous_span=previous_span if previous is not None else None,
            min_examples=exec_properties[MIN_EXAMPLES_KEY],
            max_label_drift=exec_properties[MAX_LABEL_DRIFT_KEY],
            label_feature=exec_properties[LABEL_FEATURE_KEY],
        )
        for warning in report.warnings:
            logging.warning("DataGate: %s", warning)
        if not report.fit:
            raise DataGateError(report.message())
        checked = artifact_utils.get_single_instance(output_dict[CHECKED_SCHEMA_KEY])
        io_utils.copy_file(schema_path, os.path.join(checked.uri, SCHEMA_FILE), overwrite=True)
        checked.set_string_custom_property(
            REPORT_PROPERTY, json.dumps(dataclasses.asdict(report), sort_keys=True)
        )


class DataGateSpec(types.ComponentSpec):
    """Inputs: statistics, schema, anomalies (and optionally the previous spans' statistics)."""

    PARAMETERS = {
        MIN_EXAMPLES_KEY: ExecutionParameter(type=int),
        MAX_LABEL_DRIFT_KEY: ExecutionParameter(type=float),
        LABEL_FEATURE_KEY: ExecutionParameter(type=str),
    }
    INPUTS = {
        STATISTICS_KEY: ChannelParameter(type=standard_artifacts.ExampleStatistics),
        SCHEMA_KEY: ChannelParameter(type=standard_artifacts.Schema),
        ANOMALIES_KEY: ChannelParameter(type=standard_artifacts.ExampleAnomalies),
        PREVIOUS_STATISTICS_KEY: ChannelParameter(
            type=standard_artifacts.ExampleStatistics, optional=True
        ),
    }
    OUTPUTS = {
        CHECKED_SCHEMA_KEY: ChannelParameter(type=standard_artifacts.Schema),
    }


class DataGate(base_component.BaseComponent):
    """Passes the schema to Transform and the Trainer only when the data is fit to train on."""

    SPEC_CLASS = DataGateSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        statistics: types.BaseChannel,
        schema: types.BaseChannel,
        anomalies: types.BaseChannel,
        previous_statistics: types.BaseChannel | None = None,
        ingest: IngestConfig = IngestConfig(),
        label_feature: str = features.LABEL_KEY,
    ) -> None:
        """Creates the gate.

        Args:
            statistics: StatisticsGen's output for the data to check.
            schema: SchemaGen's output.
            anomalies: ExampleValidator's output.
            previous_statistics: Statistics of earlier spans (a resolved channel);
                the gate compares with the largest span below the checked one.
            ingest: Its `min_examples` (fewest examples, all splits together)
                and `max_label_drift` (largest accepted L-infinity distance
                between label distributions of this span and the previous one).
            label_feature: The label feature's name.

        Raises:
            ValueError: `ingest` fails its validation, naming the setting.
        """
        ingest.validate()
        super().__init__(
            spec=DataGateSpec(
                statistics=statistics,
                schema=schema,
                anomalies=anomalies,
                previous_statistics=previous_statistics,
                min_examples=ingest.min_examples,
                max_label_drift=float(ingest.max_label_drift),
                label_feature=label_feature,
                checked_schema=types.Channel(type=standard_artifacts.Schema),
            )
        )
