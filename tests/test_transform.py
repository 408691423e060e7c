"""The Transform module on real tensorflow-transform with Beam, and the export built on it."""

import functools
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from PIL import Image
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

from tests.conftest import CLASS_COLOURS, encode, make_image
from trainer import export, features, transform
from trainer.config import TrainingConfig

CONFIG = TrainingConfig(backbone="mobilenet_v2", weights="none", image_size=32)
RAW_SPEC = {
    features.IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string),
    features.LABEL_KEY: tf.io.FixedLenFeature([1], tf.string),
}


def _raw_examples():
    rows = []
    for n, label in enumerate(["red", "red", "red", "green", "green", "blue"]):
        image = make_image(CLASS_COLOURS[label], seed=n)
        image_format = "PNG" if n % 2 else "JPEG"
        rows.append(
            {features.IMAGE_KEY: [encode(image, image_format)], features.LABEL_KEY: [label]}
        )
    return rows


@pytest.fixture(scope="module")
def transform_output(tmp_path_factory):
    """Runs preprocessing_fn with TFT on Beam and returns its TFTransformOutput."""
    output_dir = str(tmp_path_factory.mktemp("transform"))
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(RAW_SPEC))
    preprocessing_fn = functools.partial(
        transform.preprocessing_fn, custom_config=CONFIG.to_dict()
    )
    with tft_beam.Context(temp_dir=str(tmp_path_factory.mktemp("tft_tmp"))):
        transformed, transform_fn = (
            (_raw_examples(), metadata) | tft_beam.AnalyzeAndTransformDataset(preprocessing_fn)
        )
        _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
    metadata_io.write_metadata(
        metadata, os.path.join(output_dir, tft.TFTransformOutput.RAW_METADATA_DIR)
    )
    return tft.TFTransformOutput(output_dir), transformed[0]


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
