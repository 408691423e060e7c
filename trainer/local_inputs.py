"""Real Trainer inputs built outside a pipeline: Examples, a Transform output, FnArgs.

Everything is what TFX itself would hand `run_fn`: gzipped TFRecord splits in an
Examples artifact (as ImageFolderExampleGen writes them), a Transform graph
written by tensorflow-transform on Beam with our `preprocessing_fn`, and FnArgs
with a DataAccessor built by TFX's own factory. For running the Trainer on
labelled images in memory: the speed benchmark and the Trainer's tests.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Iterable, Sequence

import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils
from tfx import v1 as tfx
from tfx.components.util import examples_utils, tfxio_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts

from trainer import features, transform
from trainer.config import TrainingConfig

RAW_SPEC = {
    features.IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string),
    features.LABEL_KEY: tf.io.FixedLenFeature([1], tf.string),
}

Row = tuple[bytes, str]  # (encoded image, label)


def serialized_example(image: bytes, label: str) -> bytes:
    """A tf.Example of one labelled image: the image and label keys of ImageFolderExampleGen."""
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
                w.write(serialized_example(image, label))
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
    """FnArgs as TFX's Trainer executor builds them (the train and eval splits)."""
    def files(split: str) -> list[str]:
        return [os.path.join(uri, "*") for uri in artifact_utils.get_split_uris([examples], split)]

    data_accessor = tfx.components.DataAccessor(
        tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], []),
        record_batch_factory=tfxio_utils.get_record_batch_factory_from_artifact([examples], []),
        data_view_decode_fn=None,
    )
    return tfx.components.FnArgs(
        working_dir=str(workdir),
        train_files=files(features.TRAIN_SPLIT),
        eval_files=files(features.EVAL_SPLIT),
        transform_output=transform_output,
        transform_graph_path=transform_output,
        data_accessor=data_accessor,
        serving_model_dir=str(workdir / "serving_model"),
        model_run_dir=str(workdir / "model_run"),
        custom_config=config.to_dict(),
    )
