"""A real, tiny serving model for tests: Transform on Beam, a small Keras classifier, export.

The Transform output comes from the project's own `preprocessing_fn` run by
tensorflow-transform on Beam; the classifier is a small untrained CNN, so the
export, its input checks and its outputs are exercised exactly as in the
pipeline, in seconds.
"""

from __future__ import annotations

import atexit
import functools
import os
import pathlib
import shutil
import tempfile

import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

from tests.conftest import CLASS_COLOURS, encode, make_image
from trainer import export, features, transform
from trainer.config import TrainingConfig

IMAGE_SIZE = 32
CONFIG = TrainingConfig(backbone="mobilenet_v2", weights="none", image_size=IMAGE_SIZE)
RAW_SPEC = {
    features.IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string),
    features.LABEL_KEY: tf.io.FixedLenFeature([1], tf.string),
}
LABELS = ("red", "red", "red", "green", "green", "blue")
"""Vocabulary by frequency: red, green, blue."""


def colour_image(label: str, seed: int, image_format: str = "PNG", size: int = 40) -> bytes:
    return encode(make_image(CLASS_COLOURS[label], seed=seed, size=size), image_format)


def labelled_example(image_bytes: bytes, label: str) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        features.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        features.LABEL_KEY: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[label.encode()])
        ),
    })).SerializeToString()


def write_transform_output(output_dir: pathlib.Path, temp_dir: pathlib.Path) -> tuple:
    """Runs preprocessing_fn on six labelled images; returns (TFTransformOutput, rows)."""
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(RAW_SPEC))
    raw = [
        {
            features.IMAGE_KEY: [colour_image(label, n, "PNG" if n % 2 else "JPEG")],
            features.LABEL_KEY: [label],
        }
        for n, label in enumerate(LABELS)
    ]
    preprocessing_fn = functools.partial(
        transform.preprocessing_fn, custom_config=CONFIG.to_dict()
    )
    with tft_beam.Context(temp_dir=str(temp_dir)):
        transformed, transform_fn = (
            (raw, metadata) | tft_beam.AnalyzeAndTransformDataset(preprocessing_fn)
        )
        _ = transform_fn | tft_beam.WriteTransformFn(str(output_dir))
    metadata_io.write_metadata(
        metadata, os.path.join(str(output_dir), tft.TFTransformOutput.RAW_METADATA_DIR)
    )
    return tft.TFTransformOutput(str(output_dir)), transformed[0]


def tiny_classifier(num_classes: int = 3, seed: int = 0) -> tf.keras.Model:
    """Transformed image -> softmax scores; untrained, deterministic."""
    tf.keras.utils.set_random_seed(seed)
    image = tf.keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name=features.TRANSFORMED_IMAGE_KEY)
    x = tf.keras.layers.Conv2D(4, 3, activation="relu")(image)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    scores = tf.keras.layers.Dense(num_classes, activation="softmax")(x)
    return tf.keras.Model(image, scores, name="classifier")


def export_tiny_model(export_dir: pathlib.Path, tf_transform_output, *args, **kwargs) -> str:
    """Exports `tiny_classifier()` with `export.export_serving_model`; returns the dir."""
    export.export_serving_model(
        tiny_classifier(), tf_transform_output, str(export_dir), *args, **kwargs
    )
    return str(export_dir)


# ------------------------------------------------- shared across the test session

_SESSION_ROOT = pathlib.Path(tempfile.mkdtemp(prefix="transferline_serving_tests_"))
atexit.register(shutil.rmtree, _SESSION_ROOT, ignore_errors=True)


@functools.cache
def shared_transform_output() -> tuple:
    """`write_transform_output`, run once per test session, for tests that only read it."""
    return write_transform_output(_SESSION_ROOT / "transform", _SESSION_ROOT / "tft_tmp")


@functools.cache
def shared_tiny_model() -> str:
    """`export_tiny_model` with the default settings, exported once per test session.

    For tests that only read or copy it; a test that writes into a model exports its own.
    """
    tf_transform_output, _ = shared_transform_output()
    return export_tiny_model(_SESSION_ROOT / "model", tf_transform_output)
