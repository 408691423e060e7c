"""The Transform module on real tensorflow-transform with Beam, and the export built on it."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import serving_testing
from tests.conftest import encode
from trainer import export, features, transform


@pytest.fixture(scope="module")
def transform_output():
    """preprocessing_fn run by TFT's AnalyzeAndTransformDataset on Beam over six labelled
    images (red x3, green x2, blue; mobilenet_v2 at 32 px): (TFTransformOutput, rows).

    The session's one run (`serving_testing.shared_transform_output`), which the
    export and serving tests read too.
    """
    return serving_testing.shared_transform_output()


def test_vocabulary_orders_labels_by_frequency(transform_output):
    tf_transform_output, rows = transform_output
    assert export.class_names(tf_transform_output) == ["red", "green", "blue"]
    assert [int(row[features.TRANSFORMED_LABEL_KEY]) for row in rows] == [0, 0, 0, 1, 1, 2]


def test_images_are_resized_and_scaled_for_the_backbone(transform_output):
    _, rows = transform_output
    image = np.asarray(rows[0][features.TRANSFORMED_IMAGE_KEY])
    assert image.shape == (32, 32, 3)
    assert -1.0 <= image.min() and image.max() <= 1.0
    assert image[..., 0].mean() > image[..., 2].mean()  # a red image stays red


def test_decode_handles_grayscale_rgba_and_gif():
    images = [
        Image.new("L", (10, 20), 128),
        Image.new("RGBA", (12, 12), (255, 0, 0, 255)),
        Image.new("P", (8, 8), 3),
    ]
    encoded = [encode(images[0], "PNG"), encode(images[1], "PNG"), encode(images[2], "GIF")]
    decoded = transform.decode_images(tf.constant(encoded), image_size=16).numpy()
    assert decoded.shape == (3, 16, 16, 3)
    np.testing.assert_allclose(decoded[0], 128.0)
    np.testing.assert_allclose(decoded[1][..., 0], 255.0)
