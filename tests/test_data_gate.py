"""DataGate: real TFDV statistics in, a pass-through schema or one-line DataGateError out."""

import json
import os

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils

from components import data_gate
from components.config import IngestConfig
from components.data_gate import DataGateError

LABEL = "label"


def _stats(counts):
    """TFDV statistics of a label column holding `counts` (class -> examples)."""
    labels = [label for label, n in counts.items() for _ in range(n)]
    return tfdv.generate_statistics_from_dataframe(pd.DataFrame({LABEL: labels}))


def _split_stats(train, eval_=None):
    eval_ = eval_ if eval_ is not None else {label: max(1, n // 4) for label, n in train.items()}
    return {"train": _stats(train), "eval": _stats(eval_)}


def _schema(statistics):
    schema = tfdv.infer_schema(statistics["train"])
    for split, stats in statistics.items():
        if split != "train":
            schema = tfdv.update_schema(schema, stats)
    return schema


def _evaluate(statistics, previous=None, **settings):
    settings = {"min_examples": 10, "max_label_drift": 0.25, **settings}
    return data_gate.evaluate(
        statistics=statistics, schema=_schema(statistics), anomalies={}, span=2,
        previous=previous, previous_span=1 if previous is not None else None, **settings,
    )


BALANCED = {"cat": 20, "dog": 20, "fox": 20}


def test_fit_data_passes_and_reports_counts_and_drift():
    report = _evaluate(_split_stats(BALANCED), previous=_stats({"cat": 18, "dog": 22, "fox": 20}))
    assert report.fit, report.problems
    assert report.examples_per_split == {"eval": 15, "train": 60}
    assert report.label_counts["train"] == BALANCED
    assert report.compared_span == 1
    assert report.label_drift == pytest.approx(1 / 3 - 18 / 60)


def test_too_few_examples_and_an_empty_split_are_named():
    report = _evaluate({"train": _stats({"cat": 3, "dog": 3}), "eval": _stats({})}, min_examples=10)
    assert report.problems[:2] == ["too few examples: 6 < min_examples 10",
                                   "split eval has no examples"]
    assert report.message().startswith("data gate stopped the run: too few examples")


def test_a_schema_class_without_training_examples_stops_the_run():
    report = _evaluate(_split_stats({"cat": 20, "dog": 20}, eval_={"cat": 5, "dog": 5, "fox": 5}))
    assert report.problems == ["class 'fox' is in the schema but has no training examples"]


def test_a_class_without_eval_examples_is_only_a_warning():
    report = _evaluate(_split_stats({"cat": 20, "dog": 20}, eval_={"cat": 5}))
    assert report.fit
    assert report.warnings == ["class 'dog' has no eval examples: its accuracy goes unmeasured"]


def test_a_class_of_the_previous_span_missing_now_stops_the_run():
    report = _evaluate(_split_stats({"cat": 30, "dog": 30}), previous=_stats(BALANCED))
    assert "class 'fox' of span 1 has no examples in span 2" in report.problems


def test_label_drift_uses_tfdv_l_infinity_comparator():
    previous = _stats(BALANCED)
    drifted = _split_stats({"cat": 50, "dog": 5, "fox": 5})
    report = _evaluate(drifted, previous=previous)
    (problem,) = report.problems
    assert problem.startswith(
        "label distribution drifted from span 1: L-infinity distance 0.500 > max_label_drift 0.25"
    )
    assert "The Linfty distance between current and previous is 0.5" in problem
    assert report.warnings == [] and report.label_drift == pytest.approx(0.5)
    assert _evaluate(drifted, previous=previous, max_label_drift=0.6).fit


def test_new_class_is_a_warning():
    report = _evaluate(_split_stats({**BALANCED, "owl": 20}), previous=_stats(BALANCED),
                       max_label_drift=0.5)
    assert report.fit and report.warnings == ["class 'owl' is new in span 2 (not in span 1)"]


def test_example_validator_anomalies_stop_the_run():
    statistics = _split_stats(BALANCED)
    anomalies = anomalies_pb2.Anomalies()
    info = anomalies.anomaly_info["image"]
    info.short_description = "Column dropped"
    report = data_gate.evaluate(statistics=statistics, schema=_schema(statistics),
                                anomalies={"eval": anomalies}, min_examples=1,
                                max_label_drift=1.0)
    assert report.problems == ["ExampleValidator: split eval, feature image: Column dropped"]


# ----------------------------------------------------------------- the executor


def _statistics_artifact(tmp_path, name, statistics, span):
    artifact = standard_artifacts.ExampleStatistics()
    artifact.uri = str(tmp_path / name)
    artifact.split_names = artifact_utils.encode_split_names(sorted(statistics))
    artifact.span = span
    for split, stats in statistics.items():
        split_dir = artifact_utils.get_split_uri([artifact], split)
        os.makedirs(split_dir, exist_ok=True)
        io_utils.write_bytes_file(
            os.path.join(split_dir, "FeatureStats.pb"), stats.SerializeToString())
    return artifact


def _run_gate(tmp_path, statistics, previous=(), **settings):
    current = _statistics_artifact(tmp_path, "stats", statistics, span=2)
    schema = standard_artifacts.Schema()
    schema.uri = str(tmp_path / "schema")
    io_utils.write_pbtxt_file(os.path.join(schema.uri, "schema.pbtxt"), _schema(statistics))
    anomalies = standard_artifacts.ExampleAnomalies()
    anomalies.uri = str(tmp_path / "anomalies")  # ExampleValidator found nothing.
    checked = standard_artifacts.Schema()
    checked.uri = str(tmp_path / "checked")
    os.makedirs(checked.uri)
    inputs = {"statistics": [current], "schema": [schema], "anomalies": [anomalies],
              "previous_statistics": list(previous)}
    exec_properties = {"min_examples": 10, "max_label_drift": 0.25, "label_feature": LABEL,
                       **settings}
    data_gate.Executor().Do(inputs, {"checked_schema": [checked]}, exec_properties)
    return checked


def test_executor_passes_the_schema_on_with_the_report(tmp_path):
    older = _statistics_artifact(tmp_path, "span0", {"train": _stats({"cat": 1, "dog": 50})}, 0)
    previous = _statistics_artifact(tmp_path, "span1", {"train": _stats(BALANCED)}, 1)
    itself = _statistics_artifact(tmp_path, "span2", {"train": _stats({"cat": 1, "dog": 1})}, 2)

    checked = _run_gate(tmp_path, _split_stats(BALANCED), previous=[older, previous, itself])

    assert os.listdir(checked.uri) == ["schema.pbtxt"]
    assert tfdv.load_schema_text(os.path.join(checked.uri, "schema.pbtxt")).feature[0].name == LABEL
    report = json.loads(checked.get_string_custom_property(data_gate.REPORT_PROPERTY))
    assert report["compared_span"] == 1 and report["label_drift"] == pytest.approx(0.0)
    assert report["problems"] == []


def test_executor_stops_the_pipeline_with_one_line(tmp_path):
    previous = _statistics_artifact(tmp_path, "span1", {"train": _stats(BALANCED)}, 1)
    with pytest.raises(DataGateError) as raised:
        _run_gate(tmp_path, _split_stats({"cat": 50, "dog": 10}), previous=[previous])
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    assert "class 'fox' of span 1 has no examples in span 2" in message
    assert "label distribution drifted from span 1" in message
    assert not os.listdir(tmp_path / "checked")


def test_component_refuses_impossible_settings():
    from tfx.types import channel

    def stats():
        return channel.Channel(type=standard_artifacts.ExampleStatistics)

    schema = channel.Channel(type=standard_artifacts.Schema)
    anomalies = channel.Channel(type=standard_artifacts.ExampleAnomalies)
    with pytest.raises(ValueError, match="min_examples must be >= 1, got 0"):
        data_gate.DataGate(stats(), schema, anomalies, ingest=IngestConfig(min_examples=0))
    with pytest.raises(ValueError, match=r"max_label_drift must be in \(0, 1\], got 1.5"):
        data_gate.DataGate(stats(), schema, anomalies, ingest=IngestConfig(max_label_drift=1.5))
    gate = data_gate.DataGate(stats(), schema, anomalies, previous_statistics=stats())
    assert set(gate.outputs) == {data_gate.CHECKED_SCHEMA_KEY}


# ------------------------------------------------------------ pipeline wiring


def _compiled_nodes(data_root, **ingest):
    from tfx.dsl.compiler import compiler

    from components.config import IngestConfig
    from pipeline.pipeline import create_pipeline

    pipeline = create_pipeline(
        pipeline_name="p", pipeline_root="/tmp/p", data_root=str(data_root),
        serving_model_dir="/tmp/s", ingest=IngestConfig(**ingest),
    )
    ir = compiler.Compiler().compile(pipeline)
    return {node.pipeline_node.node_info.id: node.pipeline_node for node in ir.nodes}


def test_transform_and_trainer_read_the_schema_the_gate_passes_on(tmp_path):
    from pipeline import pipeline as pipeline_def
    from tests.conftest import write_class_folder

    write_class_folder(tmp_path / "d" / "span-1", per_class=1)
    nodes = _compiled_nodes(tmp_path / "d", span_window=3)

    gate = nodes[pipeline_def.DATA_GATE]
    assert pipeline_def.EXAMPLE_VALIDATOR in gate.upstream_nodes
    for node_id in (pipeline_def.TRANSFORM, pipeline_def.TRAINER):
        (channel,) = nodes[node_id].inputs.inputs["schema"].channels
        assert channel.producer_node_query.id == pipeline_def.DATA_GATE
        assert channel.output_key == data_gate.CHECKED_SCHEMA_KEY
        # The rolling window of spans: a resolver function over every ExampleGen output.
        assert nodes[node_id].inputs.inputs["examples"].HasField("input_graph_ref")
    (previous,) = gate.inputs.inputs["previous_statistics"].channels
    assert not previous.HasField("producer_node_query")  # every run's, not this run's
    assert [q.type.name for q in previous.context_queries] == ["pipeline", "node"]


def test_spans_asked_of_a_folder_without_spans_are_refused(tmp_path):
    from tests.conftest import write_class_folder

    write_class_folder(tmp_path / "d", per_class=1)
    nodes = _compiled_nodes(tmp_path / "d")
    assert "previous_statistics" not in nodes["DataGate"].inputs.inputs
    with pytest.raises(ValueError, match="span=0 and span_window=2 need span-<N> folders"):
        _compiled_nodes(tmp_path / "d", span_window=2)
