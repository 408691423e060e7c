"""The Transform module: the one preprocessing definition.

Transform runs `preprocessing_fn` to build the label vocabulary and to trace the
graph that decodes, resizes and scales images exactly as the backbone expects.
The same graph is embedded in the exported model, so training and serving can
never drift apart.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from trainer import backbones, features
from trainer.config import TrainingConfig


def decode_images(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes a batch of encoded images to float RGB pixels in [0, 255].

    Any JPEG, PNG, GIF (first frame) or BMP decodes; grayscale and RGBA become
    RGB. Each image is resized (bilinear, aspect ratio not kept) to a square.

    Args:
        image_bytes: String tensor of shape [batch].
        image_size: Side of the square output.

    Returns:
        Float32 tensor of shape [batch, image_size, image_size, 3].
    """

    def decode_one(encoded: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return tf.image.resize(image, [image_size, image_size])

    return tf.map_fn(
        decode_one,
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )


def preprocess_images(image_bytes: tf.Tensor, backbone: str, image_size: int) -> tf.Tensor:
    """Decodes, resizes and scales images as `backbone` expects them."""
    pixels = decode_images(image_bytes, image_size)
    return backbones.get_backbone(backbone).preprocess(pixels)


def preprocessing_fn(inputs: dict[str, tf.Tensor], custom_config: dict[str, Any]) -> dict:
    """TFT preprocessing_fn: images for the backbone, labels as vocabulary ids.

    Args:
        inputs: Raw features; each is a [batch, 1] tensor (fixed-shape schema).
        custom_config: `TrainingConfig.preprocessing_dict()` (backbone, image size).

    Returns:
        The transformed image ([batch, size, size, 3] float32) and label
        ([batch] int64 index into the label vocabulary).
    """
    config = TrainingConfig.from_dict(custom_config)
    image_bytes = tf.reshape(inputs[features.IMAGE_KEY], [-1])
    labels = tf.reshape(inputs[features.LABEL_KEY], [-1])
    return {
        features.TRANSFORMED_IMAGE_KEY: preprocess_images(
            image_bytes, config.backbone, config.input_size
        ),
        features.TRANSFORMED_LABEL_KEY: tft.compute_and_apply_vocabulary(
            labels, vocab_filename=features.LABEL_VOCABULARY
        ),
    }
