"""Random image augmentation for the training input only.

Augmentation never goes into Transform: there it would run once, be frozen into
the data and be applied at serving time too. Here it runs on every training
batch, after the Transform graph, so each epoch sees different variations. It is
geometric only (flips, rotation, zoom, shifts), with reflected borders, so it
works the same whatever pixel range the backbone's preprocessing produced.
"""

from __future__ import annotations

import tensorflow as tf

from trainer.config import AugmentationConfig

_FILL_MODE = "reflect"


def build_augmenter(config: AugmentationConfig, seed: int) -> tf.keras.Sequential | None:
    """The random layers `config` asks for, in one model; None when it asks for none.

    Args:
        config: Which augmentations, and how strong.
        seed: Seed of the random layers (each layer gets its own offset).

    Returns:
        A model mapping a batch of images to randomly changed images of the same
        shape when called with ``training=True``, or None.
    """
    layers = []
    flip = {
        (True, False): "horizontal", (False, True): "vertical",
        (True, True): "horizontal_and_vertical",
    }.get((config.horizontal_flip, config.vertical_flip))
    if flip:
        layers.append(tf.keras.layers.RandomFlip(flip, seed=seed, name="flip"))
    if config.rotation:
        layers.append(tf.keras.layers.RandomRotation(
            config.rotation, fill_mode=_FILL_MODE, seed=seed + 1, name="rotation"))
    if config.zoom:
        layers.append(tf.keras.layers.RandomZoom(
            config.zoom, fill_mode=_FILL_MODE, seed=seed + 2, name="zoom"))
    if config.height_shift or config.width_shift:
        layers.append(tf.keras.layers.RandomTranslation(
            config.height_shift, config.width_shift, fill_mode=_FILL_MODE, seed=seed + 3,
            name="shift"))
    if not layers:
        return None
    return tf.keras.Sequential(layers, name="augmentation")


def augment_batches(
    dataset: tf.data.Dataset, config: AugmentationConfig, seed: int
) -> tf.data.Dataset:
    """Applies `config`'s augmentation to the images of an (images, labels) dataset."""
    augmenter = build_augmenter(config, seed)
    if augmenter is None:
        return dataset

    @tf.autograph.experimental.do_not_convert  # Keras layers need no AutoGraph
    def augment(images, labels):
        return augmenter(images, training=True), labels

    return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
