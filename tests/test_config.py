"""Typed settings: defaults validate, impossible values are refused by name."""

import dataclasses

import pytest

from pipeline.config import GateConfig, IngestConfig
from trainer.config import TrainingConfig


def test_defaults_validate():
    assert TrainingConfig().validate().backbone == "efficientnet_lite0"
    IngestConfig().validate()
    GateConfig().validate()


def test_input_size_defaults_to_the_backbone():
    assert TrainingConfig().input_size == 224
    assert TrainingConfig(image_size=96).input_size == 96


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (TrainingConfig(backbone="alexnet"), "unknown backbone 'alexnet'"),
        (TrainingConfig(weights="/no/such/file.h5"), "weights='/no/such/file.h5'"),
        (TrainingConfig(image_size=8), "image_size"),
        (TrainingConfig(epochs=0), "epochs"),
        (TrainingConfig(batch_size=0), "batch_size"),
        (TrainingConfig(learning_rate=2.0), "learning_rate"),
        (TrainingConfig(dropout=1.0), "dropout"),
        (TrainingConfig(early_stopping_patience=-1), "early_stopping_patience"),
        (IngestConfig(eval_percent=0), "eval_percent"),
        (IngestConfig(min_images_per_class=0), "min_images_per_class"),
        (IngestConfig(max_side=8), "max_side"),
        (GateConfig(min_accuracy=1.5), "min_accuracy"),
        (GateConfig(max_accuracy_drop=-0.1), "max_accuracy_drop"),
    ],
)
def test_impossible_settings_are_named(config, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        config.validate()


def test_unknown_backbone_error_lists_the_choices():
    with pytest.raises(ValueError, match="efficientnet_lite0.*mobilenet_v2"):
        TrainingConfig(backbone="nope").validate()


def test_dict_round_trip_and_unknown_keys():
    config = TrainingConfig(backbone="mobilenet_v2", weights="none", epochs=3)
    assert TrainingConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown training settings \['epoch'\]"):
        TrainingConfig.from_dict({**config.to_dict(), "epoch": 3})


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainingConfig().epochs = 3  # type: ignore[misc]
