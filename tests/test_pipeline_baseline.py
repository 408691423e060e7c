"""The pipeline's baseline and warm-start source: the served version, read by ServedModel
nodes (plain containers, so every orchestrator runs them); the baseline is optional."""

import dataclasses

from components.config import GateConfig
from components.eval_config import make_eval_config
from pipeline import pipeline as pipeline_def
from tests.conftest import DEFAULT_NODE_IDS
from trainer.config import TrainingConfig


def _build(data_root, tmp_path, **kwargs):
    return pipeline_def.create_pipeline(
        pipeline_name="transferline-test", pipeline_root=str(tmp_path / "root"),
        data_root=data_root, serving_model_dir=str(tmp_path / "serving" / "model"), **kwargs)


def _nodes(pipeline):
    return {component.id: component for component in pipeline.components}


def test_the_trainer_and_evaluator_read_the_served_version(data_root, tmp_path):
    nodes = _nodes(_build(data_root, tmp_path))
    assert set(nodes) == set(DEFAULT_NODE_IDS)
    assert nodes["Trainer"].inputs["base_model"].producer_component_id == "WarmStartModel"
    assert nodes["Evaluator"].inputs["baseline_model"].producer_component_id == "ServingBaseline"
    for node_id, role in (("WarmStartModel", "warm_start"), ("ServingBaseline", "baseline")):
        node = nodes[node_id]
        assert node.exec_properties == {
            "serving_model_dir": str(tmp_path / "serving" / "model"), "role": role}
    # The warm-start read is tied to the training data (so cached with it); the
    # baseline read has no input and is switched out of the cache by the runners.
    assert nodes["WarmStartModel"].inputs["examples"].producer_component_id == (
        "ImageFolderExampleGen")
    assert "examples" not in nodes["ServingBaseline"].inputs
    assert pipeline_def.ALWAYS_RUN_IDS == ("ServingBaseline",)
    assert not any(type(node).__name__ == "Resolver" for node in nodes.values())


def test_warm_start_off_leaves_its_reader_out(data_root, tmp_path):
    nodes = _nodes(_build(data_root, tmp_path,
                          training=dataclasses.replace(TrainingConfig(), warm_start=False)))
    assert "WarmStartModel" not in nodes
    assert "base_model" not in nodes["Trainer"].inputs


def test_without_baseline_only_absolute_bounds_apply(data_root, tmp_path):
    nodes = _nodes(_build(data_root, tmp_path, baseline=False))
    assert "ServingBaseline" not in nodes
    evaluator = nodes["Evaluator"]
    assert "baseline_model" not in evaluator.inputs
    assert '"change_threshold"' not in evaluator.exec_properties["eval_config"]
    assert '"value_threshold"' in evaluator.exec_properties["eval_config"]


def test_eval_config_drops_the_change_threshold_without_baseline():
    for baseline in (True, False):
        config = make_eval_config(GateConfig(), num_classes=3, baseline=baseline)
        threshold = config.metrics_specs[0].metrics[0].per_slice_thresholds[0].threshold
        assert threshold.HasField("value_threshold")
        assert threshold.HasField("change_threshold") is baseline
