"""Augmentation: random, geometric, shape-preserving, training input only."""

import numpy as np
import tensorflow as tf

from trainer import augmentation
from trainer.config import AugmentationConfig

IMAGES = tf.constant(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)), tf.float32)
LABELS = tf.constant([0, 1, 2, 0], tf.int64)


def test_no_augmentation_builds_nothing_and_leaves_the_data_alone():
    assert augmentation.build_augmenter(AugmentationConfig(), seed=0) is None
    dataset = tf.data.Dataset.from_tensors((IMAGES, LABELS))
    assert augmentation.augment_batches(dataset, AugmentationConfig(), seed=0) is dataset


def test_every_setting_adds_its_layer():
    config = AugmentationConfig(horizontal_flip=True, vertical_flip=True, rotation=0.2,
                                zoom=0.2, height_shift=0.2, width_shift=0.1)
    augmenter = augmentation.build_augmenter(config, seed=0)
    assert [layer.name for layer in augmenter.layers] == ["flip", "rotation", "zoom", "shift"]
    assert augmenter.get_layer("flip").mode == "horizontal_and_vertical"
    assert augmenter.get_layer("shift").width_factor == 0.1


def test_augmented_batches_keep_shape_and_labels_and_change_images():
    config = AugmentationConfig(rotation=0.2, zoom=0.2, height_shift=0.2, width_shift=0.2)
    dataset = tf.data.Dataset.from_tensors((IMAGES, LABELS))
    images, labels = next(iter(augmentation.augment_batches(dataset, config, seed=1)))
    assert images.shape == IMAGES.shape
    np.testing.assert_array_equal(labels, LABELS)
    assert not np.allclose(images, IMAGES)
    # Reflected borders: no constant fill outside the pixel range of the inputs.
    assert images.numpy().min() >= -1.0 - 1e-5 and images.numpy().max() <= 1.0 + 1e-5


def test_a_horizontal_flip_mirrors_or_keeps_each_image():
    config = AugmentationConfig(horizontal_flip=True)
    dataset = tf.data.Dataset.from_tensors((IMAGES, LABELS)).repeat(4)
    for images, _ in augmentation.augment_batches(dataset, config, seed=2):
        for original, augmented in zip(IMAGES.numpy(), images.numpy(), strict=True):
            assert (np.allclose(augmented, original)
                    or np.allclose(augmented, original[:, ::-1]))


def test_augmentation_is_off_outside_training():
    augmenter = augmentation.build_augmenter(AugmentationConfig(rotation=0.3), seed=0)
    np.testing.assert_allclose(augmenter(IMAGES, training=False), IMAGES)
