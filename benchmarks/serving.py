"""Serving benchmark: the exported `serving_default` (raw bytes in) against the bare Keras model.

Builds the pipeline's real classifier (`trainer.classifier.build_parts`) and a real
Transform output (the project's `preprocessing_fn` run by tensorflow-transform on
Beam over a few generated images), exports it with `trainer.export`, and times,
in the same process and interleaved so both see the same machine load:

1. serving: the loaded SavedModel's `serving_default` on a batch of encoded
   JPEGs: input checks, decode, resize, scaling, the classifier, class names;
2. bare: the in-memory Keras classifier (called through a `tf.function`, its
   fastest form) on the same images already decoded and transformed.

Prints the median latency per image at batch 1, images/s at batch 32, and the
serving/bare ratios. Target (issue 5): ratio <= 1.15 at batch 32. A script,
not a test: the figures depend on the machine and on what else runs on it.

    .venv/bin/python benchmarks/serving.py [--backbone efficientnet_lite0] \\
        [--image-size 224] [--source-size 640x480] [--rounds 15]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tensorflow_transform.beam as tft_beam  # noqa: E402
from synthetic_images import photo_jpeg  # noqa: E402
from tensorflow_transform.tf_metadata import (  # noqa: E402
    dataset_metadata,
    metadata_io,
    schema_utils,
)

from trainer import classifier as classifier_lib  # noqa: E402
from trainer import export, features, transform  # noqa: E402
from trainer.config import TrainingConfig  # noqa: E402

CLASSES = ("red", "green", "blue")
COLOURS = ((200, 40, 40), (40, 180, 50), (40, 50, 200))
BATCH = 32


def transform_output(config: TrainingConfig, images: list[bytes], workdir: str):
    """The project's preprocessing_fn analysed on Beam over `images`."""
    spec = {
        features.IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string),
        features.LABEL_KEY: tf.io.FixedLenFeature([1], tf.string),
    }
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    raw = [
        {features.IMAGE_KEY: [image], features.LABEL_KEY: [CLASSES[n % len(CLASSES)]]}
        for n, image in enumerate(images)
    ]
    output_dir = os.path.join(workdir, "transform")
    preprocessing_fn = functools.partial(transform.preprocessing_fn, custom_config=config.to_dict())
    with tft_beam.Context(temp_dir=os.path.join(workdir, "tft_tmp")):
        _, transform_fn = (raw, metadata) | tft_beam.AnalyzeAndTransformDataset(preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
    metadata_io.write_metadata(
        metadata, os.path.join(output_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return tft.TFTransformOutput(output_dir)


def seconds_per_call(fn, argument, repeats: int) -> float:
    """Median wall time of `fn(argument)` (outputs fetched) over `repeats` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = fn(argument)
        for value in (outputs.values() if isinstance(outputs, dict) else [outputs]):
            value.numpy()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="none",
                        help="speed does not depend on the weights' values (default none)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's")
    parser.add_argument("--source-size", default="640x480", help="WxH of the encoded JPEGs")
    parser.add_argument("--rounds", type=int, default=15,
                        help="interleaved rounds; each times both paths")
    args = parser.parse_args()
    width, height = (int(v) for v in args.source_size.split("x"))
    config = TrainingConfig(backbone=args.backbone, weights=args.weights,
                            image_size=args.image_size).validate()
    rng = np.random.default_rng(0)
    images = [photo_jpeg(rng, width, height, COLOURS[n % 3]) for n in range(BATCH)]
    print(f"backbone {config.backbone} at {config.input_size}px, {BATCH} JPEGs of "
          f"{width}x{height} (~{np.mean([len(i) for i in images]) / 1024:.0f} KiB each), "
          f"TF {tf.__version__}, {os.cpu_count()} CPUs", flush=True)

    with tempfile.TemporaryDirectory() as workdir:
        tf_transform_output = transform_output(config, images[:6], workdir)
        classifier = classifier_lib.build_parts(config, len(CLASSES)).classifier
        export_dir = os.path.join(workdir, "model")
        export.export_serving_model(classifier, tf_transform_output, export_dir)
        serve = tf.saved_model.load(export_dir).signatures[export.SERVING_DEFAULT]

        def serving(batch):
            return serve(**{export.IMAGE_BYTES_INPUT: batch})

        bare = tf.function(lambda pixels: classifier(pixels, training=False))
        transformed = tf_transform_output.transform_features_layer()(
            {features.IMAGE_KEY: tf.reshape(tf.constant(images), [-1, 1])}
        )[features.TRANSFORMED_IMAGE_KEY]
        np.testing.assert_allclose(
            serving(tf.constant(images[:4]))[export.SCORES_OUTPUT].numpy(),
            bare(transformed[:4]).numpy(), atol=1e-5)  # the same model, the same answers

        one_bytes = [tf.constant(images[i:i + 1]) for i in range(8)]
        one_pixels = [transformed[i:i + 1] for i in range(8)]
        for _ in range(3):  # warm up both paths and both batch shapes
            serving(tf.constant(images)), bare(transformed)
            serving(one_bytes[0]), bare(one_pixels[0])
        timings = {key: [] for key in ("serving1", "bare1", "serving32", "bare32")}
        for round_index in range(args.rounds):
            i = round_index % len(one_bytes)
            timings["serving1"].append(seconds_per_call(serving, one_bytes[i], 5))
            timings["bare1"].append(seconds_per_call(bare, one_pixels[i], 5))
            timings["serving32"].append(seconds_per_call(serving, tf.constant(images), 2))
            timings["bare32"].append(seconds_per_call(bare, transformed, 2))
        median = {key: statistics.median(values) for key, values in timings.items()}

    print(f"batch 1:  serving_default {median['serving1'] * 1e3:7.2f} ms/image   "
          f"bare Keras {median['bare1'] * 1e3:7.2f} ms/image   "
          f"ratio {median['serving1'] / median['bare1']:.2f}x")
    print(f"batch {BATCH}: serving_default {BATCH / median['serving32']:7.1f} images/s   "
          f"bare Keras {BATCH / median['bare32']:7.1f} images/s   "
          f"ratio {median['serving32'] / median['bare32']:.2f}x (target <= 1.15x)")


if __name__ == "__main__":
    main()
