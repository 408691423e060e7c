"""The pipeline's resolvers: warm start from the model blessed before the data, and
the optional baseline (left out for open-source Kubeflow Pipelines)."""

import dataclasses

from tfx.types import standard_artifacts

from components.config import GateConfig
from components.eval_config import make_eval_config
from pipeline import pipeline as pipeline_def
from pipeline.warm_start_resolver import BlessedBeforeDataStrategy
from trainer.config import TrainingConfig


def _build(data_root, tmp_path, **kwargs):
    return pipeline_def.create_pipeline(
        pipeline_name="transferline-test", pipeline_root=str(tmp_path / "root"),
        data_root=data_root, serving_model_dir=str(tmp_path / "serving" / "model"), **kwargs)


def _nodes(pipeline):
    return {component.id: component for component in pipeline.components}


def test_the_trainer_warm_starts_from_the_warm_start_resolver(data_root, tmp_path):
    nodes = _nodes(_build(data_root, tmp_path))
    assert set(nodes) == set(pipeline_def.NODE_IDS)
    base_model = nodes[pipeline_def.TRAINER].inputs["base_model"]
    assert base_model.producer_component_id == pipeline_def.WARM_START_RESOLVER
    baseline = nodes[pipeline_def.EVALUATOR].inputs["baseline_model"]
    assert baseline.producer_component_id == pipeline_def.BASELINE_RESOLVER


def test_warm_start_off_leaves_the_resolver_out(data_root, tmp_path):
    nodes = _nodes(_build(data_root, tmp_path,
                          training=dataclasses.replace(TrainingConfig(), warm_start=False)))
    assert pipeline_def.WARM_START_RESOLVER not in nodes
    assert "base_model" not in nodes[pipeline_def.TRAINER].inputs


def test_without_baseline_only_absolute_bounds_apply(data_root, tmp_path):
    nodes = _nodes(_build(data_root, tmp_path, baseline=False))
    assert pipeline_def.BASELINE_RESOLVER not in nodes
    evaluator = nodes[pipeline_def.EVALUATOR]
    assert "baseline_model" not in evaluator.inputs
    assert '"change_threshold"' not in evaluator.exec_properties["eval_config"]
    assert '"value_threshold"' in evaluator.exec_properties["eval_config"]


def test_eval_config_drops_the_change_threshold_without_baseline():
    for baseline in (True, False):
        config = make_eval_config(GateConfig(), num_classes=3, baseline=baseline)
        threshold = config.metrics_specs[0].metrics[0].per_slice_thresholds[0].threshold
        assert threshold.HasField("value_threshold")
        assert threshold.HasField("change_threshold") is baseline


# ------------------------------------------------------------ BlessedBeforeData


def _artifact(kind, artifact_id, **properties):
    artifact = kind()
    artifact.id = artifact_id
    for name, value in properties.items():
        artifact.set_int_custom_property(name, value)
    return artifact


def _blessing(artifact_id, model_id, blessed=1):
    return _artifact(standard_artifacts.ModelBlessing, artifact_id,
                     current_model_id=model_id, blessed=blessed)


def _resolve(models, blessings, examples):
    result = BlessedBeforeDataStrategy().resolve_artifacts(None, {
        "model": [_artifact(standard_artifacts.Model, i) for i in models],
        "model_blessing": blessings,
        "examples": [_artifact(standard_artifacts.Examples, i) for i in examples],
    })
    return [model.id for model in result["model"]]


def test_the_model_blessed_before_the_newest_examples_is_chosen():
    blessings = [_blessing(11, 10), _blessing(31, 30), _blessing(41, 40, blessed=0)]
    # Span 1 (examples 5): nothing was blessed before it.
    assert _resolve([10], blessings, [5]) == []
    # Re-run on span 1: model 10 was trained on it afterwards; still nothing.
    assert _resolve([10, 30], blessings, [5]) == []
    # Span 2 lands (examples 20), alone or in a window with span 1: model 10.
    assert _resolve([10, 30], blessings, [20]) == [10]
    assert _resolve([10, 30], blessings, [5, 20]) == [10]
    # Span 3 (examples 50): model 30 is the latest blessed one; 40 was not blessed.
    assert _resolve([10, 30, 40], blessings, [50]) == [30]
    assert _resolve([10], [], [50]) == []
