"""Typed settings: defaults validate, impossible values are refused by name."""

import dataclasses
import pickle
import re
import zipfile

import pytest

from components.config import GateConfig, IngestConfig
from trainer.config import (
    AugmentationConfig,
    ExportConfig,
    FineTuningConfig,
    HeadConfig,
    TrainingConfig,
    recorded_input_size,
)


def test_defaults_validate():
    config = TrainingConfig().validate()
    assert config.backbone == "efficientnet_lite0"
    assert not config.augmentation.enabled and not config.fine_tuning.enabled
    assert config.cache_features and config.class_weights == "none"
    IngestConfig().validate()
    GateConfig().validate()


def test_input_size_defaults_to_the_backbone():
    assert TrainingConfig().input_size == 224
    assert TrainingConfig(backbone="inception_v3").input_size == 299
    assert TrainingConfig(image_size=96).input_size == 96


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (TrainingConfig(backbone="alexnet"), "unknown backbone 'alexnet'"),
        (TrainingConfig(weights="/no/such/file.h5"), "weights='/no/such/file.h5'"),
        (TrainingConfig(backbone="vgg16", weights="package"), "vgg16 has no weights package"),
        (TrainingConfig(image_size=8), "image_size must be at least 32"),
        (TrainingConfig(backbone="inception_v3", image_size=64), "at least 75 pixels"),
        (TrainingConfig(backbone="vgg16", cut_layer="fc9"), "cut_layer='fc9'"),
        (TrainingConfig(epochs=0), "epochs"),
        (TrainingConfig(batch_size=0), "batch_size"),
        (TrainingConfig(learning_rate=2.0), "learning_rate"),
        (TrainingConfig(optimizer="adamw"), "optimizer must be one of"),
        (TrainingConfig(early_stopping_patience=-1), "early_stopping_patience"),
        (TrainingConfig(class_weights="balanced"), "class_weights must be"),
        (TrainingConfig(class_weights={"cat": 0.0}), "class_weights must all be positive"),
        (TrainingConfig(mixed_precision="maybe"), "mixed_precision"),
        (TrainingConfig(head=HeadConfig(dropout=1.0)), "head.dropout"),
        (TrainingConfig(head=HeadConfig(pooling="mean")), "head.pooling"),
        (TrainingConfig(head=HeadConfig(dense_units=(8, 0))), "head.dense_units"),
        (TrainingConfig(head=HeadConfig(activation="wiggle")), "head.activation 'wiggle'"),
        (TrainingConfig(augmentation=AugmentationConfig(rotation=1.5)), "augmentation.rotation"),
        (TrainingConfig(fine_tuning=FineTuningConfig(unfreeze_layers=-1)),
         "fine_tuning.unfreeze_layers"),
        (TrainingConfig(fine_tuning=FineTuningConfig(unfreeze_layers="top")),
         "fine_tuning.unfreeze_layers"),
        (TrainingConfig(fine_tuning=FineTuningConfig(learning_rate=0.0)),
         "fine_tuning.learning_rate"),
        (TrainingConfig(epochs="3"), "epochs: expected a whole number, got '3'"),
        (TrainingConfig(export=ExportConfig(max_image_pixels=0)),
         "export.max_image_pixels must be at least 1, got 0"),
        (TrainingConfig(export=ExportConfig(tflite_tolerance=0.0)),
         "export.tflite_tolerance must be in (0, 1)"),
        (TrainingConfig(export=ExportConfig(tflite_tolerance=1.0)),
         "export.tflite_tolerance must be in (0, 1)"),
        (ExportConfig(max_image_pixels=-5), "export.max_image_pixels"),
        (ExportConfig(max_image_pixels=2**29),
         "export.max_image_pixels must be at most 536870911 (TensorFlow cannot decode an "
         "image of 2**29 pixels or more), got 536870912"),
        (ExportConfig(max_image_pixels=20_000_000_000_000_000_000),
         "export.max_image_pixels must be at most 536870911"),
        (TrainingConfig(image_size=1025), "image_size must be at most 1024 pixels"),
        (TrainingConfig(image_size=100_000), "got 100000"),
        (ExportConfig(max_image_pixels=1.5e7), "max_image_pixels: expected a whole number"),
        (ExportConfig(tflite="yes"), "tflite: expected true or false, got 'yes'"),
        (IngestConfig(eval_percent=0), "eval_percent"),
        (IngestConfig(min_images_per_class=0), "min_images_per_class"),
        (IngestConfig(max_side=8), "max_side"),
        (GateConfig(min_accuracy=1.5), "min_accuracy"),
        (GateConfig(max_accuracy_drop=-0.1), "max_accuracy_drop"),
    ],
)
def test_impossible_settings_are_named(config, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        config.validate()


def test_the_largest_image_size_and_pixel_budget_are_allowed():
    assert TrainingConfig(image_size=1024).validate().input_size == 1024
    assert ExportConfig(max_image_pixels=2**29 - 1).validate().max_image_pixels == 536_870_911


def test_a_weights_directory_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError) as raised:
        TrainingConfig(weights=str(tmp_path)).validate()
    assert str(raised.value) == (
        f"weights={str(tmp_path)!r} is a directory; expected a weights file (.h5, .pth)")


def test_a_hostile_pth_is_refused_by_validate_with_the_unpicklers_message(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + pickle.GLOBAL + b"posix\nsystem\n"
                         + pickle.dumps(f"touch {marker}", protocol=2)[2:-1]
                         + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    with pytest.raises(ValueError) as raised:
        TrainingConfig(weights=str(path)).validate()
    assert str(raised.value) == (
        f"weights: {path}: forbidden global posix.system in checkpoint; a state dict only "
        "needs tensors, storages and OrderedDict")
    assert not marker.exists()


def test_a_pth_that_is_no_checkpoint_is_refused_by_name(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError) as raised:
        TrainingConfig(weights=str(path)).validate()
    assert str(raised.value).startswith(f"weights: {path}: not a valid PyTorch checkpoint: ")


def test_export_defaults_keep_todays_pixel_budget_and_no_tflite():
    settings = TrainingConfig().export.validate()
    assert settings == ExportConfig(max_image_pixels=40_000_000, tflite=False,
                                    tflite_tolerance=1e-3)
    config = TrainingConfig.from_dict({"weights": "none", "export": {"tflite": True,
                                                                     "max_image_pixels": 1000}})
    assert config.export == ExportConfig(max_image_pixels=1000, tflite=True)
    assert TrainingConfig.from_dict(config.to_dict()) == config


def test_unknown_backbone_error_lists_the_choices():
    with pytest.raises(ValueError, match="efficientnet_lite0.*mobilenet_v2.*vgg16"):
        TrainingConfig(backbone="nope").validate()


def test_dict_round_trip_is_json_safe_and_nested():
    config = TrainingConfig(
        backbone="inception_v3", weights="none", cut_layer="mixed7", epochs=3,
        head=HeadConfig(pooling="flatten", dense_units=(1024,), binary=True),
        augmentation=AugmentationConfig(horizontal_flip=True, zoom=0.2),
        fine_tuning=FineTuningConfig(unfreeze_layers="all"),
        class_weights={"cat": 2.0},
    )
    values = config.to_dict()
    assert values["head"]["dense_units"] == [1024]  # a list: JSON has no tuples
    assert TrainingConfig.from_dict(values) == config


def test_transform_gets_only_what_preprocessing_depends_on():
    config = TrainingConfig(backbone="vgg16", weights="none", epochs=3,
                            head=HeadConfig(dense_units=(8,)))
    preprocessing = TrainingConfig.from_dict(config.preprocessing_dict())
    assert (preprocessing.backbone, preprocessing.input_size) == ("vgg16", 224)
    assert preprocessing.preprocessing_dict() == config.preprocessing_dict()
    assert dataclasses.replace(config, epochs=9, learning_rate=0.1).preprocessing_dict() == (
        config.preprocessing_dict())


def test_nested_sections_may_be_given_as_mappings():
    config = TrainingConfig(head={"dense_units": [64], "dropout": "0.5"}, weights="none")
    assert config.head == HeadConfig(dense_units=(64,), dropout=0.5)
    assert config.validate().head.dense_units == (64,)


def test_unknown_and_mistyped_keys_are_refused_by_name():
    with pytest.raises(ValueError, match=r"^epoch: unknown setting; training settings are"):
        TrainingConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match=r"^head\.dense_unit: unknown setting; head settings"):
        TrainingConfig.from_dict({"head": {"dense_unit": [3]}})
    with pytest.raises(ValueError, match=r"^head\.binary: expected true or false, got 'yes'"):
        TrainingConfig.from_dict({"head": {"binary": "yes"}})
    with pytest.raises(ValueError, match=r"^fine_tuning: expected a mapping"):
        TrainingConfig.from_dict({"fine_tuning": 10})


def test_yaml_style_numbers_are_accepted_where_floats_are_expected():
    config = TrainingConfig.from_dict({"learning_rate": "1e-4", "weights": "none",
                                       "fine_tuning": {"learning_rate": "1e-5"}})
    assert config.learning_rate == 1e-4 and config.fine_tuning.learning_rate == 1e-5


def test_enabled_flags():
    assert AugmentationConfig(width_shift=0.1).enabled
    assert FineTuningConfig(unfreeze_layers="all").enabled
    assert FineTuningConfig(unfreeze_layers=10).enabled


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainingConfig().epochs = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainingConfig().head.dropout = 0.5  # type: ignore[misc]


def test_recorded_input_size_needs_only_backbone_and_image_size():
    recorded = {**TrainingConfig(image_size=96).to_dict(), "setting_of_a_later_version": 1}
    assert recorded_input_size(recorded) == 96
    assert recorded_input_size({"backbone": "vgg16"}) == 224
    assert recorded_input_size({"backbone": "no_such_backbone"}) is None
    assert recorded_input_size({"image_size": "big"}) is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (IngestConfig(max_side=0), "max_side must be >= 32, got 0"),
        (IngestConfig(max_pixels=0), "max_pixels must be >= 1, got 0"),
        (IngestConfig(jpeg_quality=101), "jpeg_quality must be <= 100, got 101"),
        (IngestConfig(jpeg_quality=True), "jpeg_quality must be an int, got True"),
    ],
)
def test_ingest_image_limits_are_named(config, message):
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_ingest_defaults_validate_and_are_frozen():
    config = IngestConfig().validate()
    assert (config.max_side, config.max_pixels, config.jpeg_quality) == (1024, 100_000_000, 95)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_side = 5  # type: ignore[misc]
