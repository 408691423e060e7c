"""Real Trainer inputs for tests: tf.Examples on disk, a Transform output, FnArgs.

Everything is what TFX itself would hand `run_fn`: gzipped TFRecord splits in an
Examples artifact, a DataAccessor built from it by TFX's own factory, and a
Transform graph written by tensorflow-transform on Beam. Nothing is mocked.
"""

from __future__ import annotations

import atexit
import functools
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable, Sequence

import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils
from tfx import v1 as tfx
from tfx.components.util import examples_utils, tfxio_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts

from tests.conftest import CLASS_COLOURS, encode, make_image
from trainer import features, transform
from trainer.config import TrainingConfig

RAW_SPEC = {
    features.IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string),
    features.LABEL_KEY: tf.io.FixedLenFeature([1], tf.string),
}
SPLITS = (features.TRAIN_SPLIT, features.EVAL_SPLIT)

Row = tuple[bytes, str]  # (encoded image, label)


def colour_rows(per_class: dict[str, int], seed_offset: int = 0, size: int = 40) -> list[Row]:
    """Encoded textured images of one dominant colour per class (see conftest)."""
    rows = []
    for class_index, (label, count) in enumerate(per_class.items()):
        for n in range(count):
            seed = seed_offset + class_index * 10_000 + n
            image = make_image(CLASS_COLOURS[label], seed, size)
            rows.append((encode(image, "PNG" if n % 2 else "JPEG"), label))
    return rows


def _example(image: bytes, label: str) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        features.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        features.LABEL_KEY: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[label.encode()])),
    })).SerializeToString()


def write_examples(
    root: pathlib.Path, splits: dict[str, Sequence[Row]]
) -> standard_artifacts.Examples:
    """Writes each split as ExampleGen does (`Split-<name>/*.gz`); returns the artifact."""
    for split, rows in splits.items():
        folder = root / f"Split-{split}"
        folder.mkdir(parents=True, exist_ok=True)
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        with tf.io.TFRecordWriter(str(folder / "data_tfrecord-00000-of-00001.gz"), options) as w:
            for image, label in rows:
                w.write(_example(image, label))
    examples = standard_artifacts.Examples()
    examples.uri = str(root)
    examples.split_names = artifact_utils.encode_split_names(list(splits))
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    return examples


def write_transform_output(
    output_dir: pathlib.Path, config: TrainingConfig, rows: Iterable[Row], temp_dir: pathlib.Path
) -> str:
    """Analyses `rows` with the project's preprocessing_fn on Beam; returns the output dir."""
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(RAW_SPEC))
    raw = [{features.IMAGE_KEY: [image], features.LABEL_KEY: [label.encode()]}
           for image, label in rows]
    preprocessing_fn = functools.partial(transform.preprocessing_fn,
                                         custom_config=config.to_dict())
    with tft_beam.Context(temp_dir=str(temp_dir), force_tf_compat_v1=False):
        transform_fn = (raw, metadata) | tft_beam.AnalyzeDataset(preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(str(output_dir))
    metadata_io.write_metadata(
        metadata, os.path.join(str(output_dir), tft.TFTransformOutput.RAW_METADATA_DIR)
    )
    return str(output_dir)


def make_fn_args(
    examples: standard_artifacts.Examples,
    transform_output: str,
    config: TrainingConfig,
    workdir: pathlib.Path,
) -> tfx.components.FnArgs:
    """FnArgs as TFX's Trainer executor builds them (train split 'train', eval 'eval')."""
    def files(split: str) -> list[str]:
        return [os.path.join(uri, "*") for uri in artifact_utils.get_split_uris([examples], split)]

    data_accessor = tfx.components.DataAccessor(
        tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], []),
        record_batch_factory=tfxio_utils.get_record_batch_factory_from_artifact([examples], []),
        data_view_decode_fn=None,
    )
    return tfx.components.FnArgs(
        working_dir=str(workdir),
        train_files=files("train"),
        eval_files=files("eval"),
        transform_output=transform_output,
        transform_graph_path=transform_output,
        data_accessor=data_accessor,
        serving_model_dir=str(workdir / "serving_model"),
        model_run_dir=str(workdir / "model_run"),
        custom_config=config.to_dict(),
    )


def serve(export_dir: str, images: Sequence[bytes]) -> dict[str, tf.Tensor]:
    """Runs the exported model's serving_default on encoded images."""
    from trainer import export

    loaded = tf.saved_model.load(export_dir)
    return loaded.signatures[export.SERVING_DEFAULT](
        **{export.IMAGE_BYTES_INPUT: tf.constant(list(images))}
    )


# ------------------------------------------------- shared across the test session

_SESSION_ROOT = pathlib.Path(tempfile.mkdtemp(prefix="transferline_trainer_tests_"))
atexit.register(shutil.rmtree, _SESSION_ROOT, ignore_errors=True)

TRAIN_PER_CLASS = {"red": 20, "green": 20, "blue": 20}
EVAL_PER_CLASS = {"red": 4, "green": 4, "blue": 4}


@functools.cache
def colour_examples(
    train: tuple[tuple[str, int], ...] = tuple(TRAIN_PER_CLASS.items()),
    eval_: tuple[tuple[str, int], ...] = tuple(EVAL_PER_CLASS.items()),
) -> tuple[standard_artifacts.Examples, tuple[Row, ...], tuple[Row, ...]]:
    """Train and eval splits of colour images, written once per test session."""
    train_rows = colour_rows(dict(train))
    eval_rows = colour_rows(dict(eval_), seed_offset=5_000)
    root = pathlib.Path(tempfile.mkdtemp(dir=_SESSION_ROOT))
    examples = write_examples(root, {"train": train_rows, "eval": eval_rows})
    return examples, tuple(train_rows), tuple(eval_rows)


@functools.cache
def transform_output_for(backbone: str, image_size: int, rows: tuple[Row, ...]) -> str:
    """A Transform output for one backbone's preprocessing, built once per session."""
    config = TrainingConfig(backbone=backbone, weights="imagenet" if backbone.startswith(
        "hub:") else "none", image_size=image_size)
    root = pathlib.Path(tempfile.mkdtemp(dir=_SESSION_ROOT))
    return write_transform_output(root / "transform", config, rows, root / "tmp")


def fn_args_for(
    config: TrainingConfig,
    workdir: pathlib.Path,
    train: dict[str, int] | None = None,
    eval_: dict[str, int] | None = None,
) -> tfx.components.FnArgs:
    """FnArgs for `config` on the colour examples, with a matching Transform output."""
    examples, train_rows, _ = colour_examples(
        tuple((train or TRAIN_PER_CLASS).items()), tuple((eval_ or EVAL_PER_CLASS).items()))
    transform_dir = transform_output_for(config.backbone, config.input_size, train_rows)
    return make_fn_args(examples, transform_dir, config, workdir)
