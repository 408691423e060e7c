"""The Trainer's input through the Transform graph, read with TFX's DataAccessor."""

import logging
import pathlib

import numpy as np

from tests import trainer_testing
from trainer import features
from trainer.config import TrainingConfig
from trainer.data import TrainingData

CONFIG = TrainingConfig(backbone="mobilenet_v2", weights="none", image_size=32)


def _data(tmp_path: pathlib.Path, train: dict, eval_: dict) -> TrainingData:
    train_rows = trainer_testing.colour_rows(train)
    eval_rows = trainer_testing.colour_rows(eval_, seed_offset=900)
    examples = trainer_testing.write_examples(tmp_path / "examples",
                                              {"train": train_rows, "eval": eval_rows})
    transform_dir = trainer_testing.transform_output_for(
        CONFIG.backbone, CONFIG.input_size, tuple(train_rows))
    return TrainingData.from_fn_args(
        trainer_testing.make_fn_args(examples, transform_dir, CONFIG, tmp_path))


def test_images_and_labels_in_file_order_and_label_counts(tmp_path):
    data = _data(tmp_path, {"red": 5, "green": 3}, {"red": 2, "green": 1})
    assert data.class_names == ["red", "green"]
    np.testing.assert_array_equal(data.label_counts(features.TRAIN_SPLIT), [5, 3])
    batches = list(data.images_and_labels(features.TRAIN_SPLIT, batch_size=4))
    assert [len(labels) for _, labels in batches] == [4, 4]
    images = np.concatenate([images for images, _ in batches])
    assert images.shape == (8, 32, 32, 3) and -1 <= images.min() and images.max() <= 1
    assert np.concatenate([labels for _, labels in batches]).tolist() == [0] * 5 + [1] * 3


def test_shuffled_batches_hold_every_example(tmp_path):
    data = _data(tmp_path, {"red": 5, "green": 3}, {"red": 2, "green": 1})
    batches = data.images_and_labels(features.TRAIN_SPLIT, 3, True, seed=1)
    labels = np.concatenate([batch for _, batch in batches])
    assert sorted(labels.tolist()) == [0] * 5 + [1] * 3


def test_labels_outside_the_vocabulary_are_reported_and_left_out(tmp_path, caplog):
    data = _data(tmp_path, {"red": 5, "green": 3}, {"red": 2, "blue": 2})
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(data.label_counts(features.EVAL_SPLIT), [2, 0])
    assert "2 eval examples have labels outside the label vocabulary" in caplog.text
    batches = data.images_and_labels(features.EVAL_SPLIT, batch_size=8)
    labels = np.concatenate([batch for _, batch in batches])
    assert labels.tolist() == [0, 0]
