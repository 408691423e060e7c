"""create_pipeline's shape: node ids, what each node is given, impossible settings refused."""

import dataclasses
import json

import pytest

from components.config import IngestConfig
from pipeline import pipeline as pipeline_def
from tests.conftest import DEFAULT_NODE_IDS, EXPECTED_NODE_IDS
from trainer.config import HeadConfig, TrainingConfig, TuningConfig


def _build(data_root: str, tmp_path, **kwargs):
    return pipeline_def.create_pipeline(
        pipeline_name="transferline-test",
        pipeline_root=str(tmp_path / "root"),
        data_root=data_root,
        serving_model_dir=str(tmp_path / "serving" / "model"),
        **kwargs,
    )


def _node(pipeline, node_id: str):
    return next(c for c in pipeline.components if c.id == node_id)




def test_nodes_have_the_stable_ids(data_root, tmp_path):
    components = _build(data_root, tmp_path).components
    assert sorted(component.id for component in components) == sorted(DEFAULT_NODE_IDS)
    assert list(pipeline_def.NODE_IDS) == EXPECTED_NODE_IDS  # in the order they run


def test_every_node_id_is_given_explicitly(data_root, tmp_path):
    """Most ids equal TFX's default (the class name): only an explicit `.with_id`
    keeps them stable if a component class is renamed or subclassed."""
    for component in _build(data_root, tmp_path).components:
        assert component._id == component.id, f"{component.id} has no .with_id"  # noqa: SLF001


def test_transform_gets_only_what_preprocessing_depends_on(data_root, tmp_path):
    """A new head or optimizer must leave Transform's inputs, hence its cache, unchanged."""
    training = TrainingConfig(image_size=64)
    other_head = dataclasses.replace(
        training, learning_rate=0.01, head=HeadConfig(dense_units=(32,), dropout=0.5)
    )
    configs = [
        _node(_build(data_root, tmp_path, training=config), pipeline_def.TRANSFORM)
        .exec_properties["custom_config"]
        for config in (training, other_head)
    ]
    assert configs[0] == configs[1]
    assert "backbone" in configs[0] and "64" in configs[0] and "learning_rate" not in configs[0]
    trainer = _node(_build(data_root, tmp_path, training=other_head), pipeline_def.TRAINER)
    assert "learning_rate" in trainer.exec_properties["custom_config"]


def test_a_span_setting_without_span_folders_is_refused(data_root, tmp_path):
    with pytest.raises(ValueError, match="span-<N> folders"):
        _build(data_root, tmp_path, ingest=IngestConfig(span=2))


def test_platform_config_for_an_unknown_node_is_refused(data_root, tmp_path):
    with pytest.raises(ValueError, match="unknown node 'Trainr'"):
        _build(data_root, tmp_path, platform_configs={"Trainr": object()})


def test_tune_adds_a_tuner_on_the_embeddings_that_feeds_the_trainer(data_root, tmp_path):
    training = TrainingConfig(tuning=TuningConfig(enabled=True, max_trials=4))
    pipeline = _build(data_root, tmp_path, training=training)
    assert sorted(component.id for component in pipeline.components) == sorted(EXPECTED_NODE_IDS)
    tuner, trainer = _node(pipeline, "Tuner"), _node(pipeline, "Trainer")
    assert tuner.inputs["embeddings"].producer_component_id == "Embedder"
    assert trainer.inputs["hyperparameters"].producer_component_id == "Tuner"
    assert json.loads(tuner.exec_properties["custom_config"])["tuning"] == {
        "enabled": True, "max_trials": 4, "max_seconds": 600.0}

