"""components/image_folder_beam.py: hand-encoded tf.Examples and TFRecords, read back by TF."""

import os
import subprocess
import sys

import apache_beam as beam
import tensorflow as tf

from components import image_folder_beam
from components.file_outcome import FileStatus, IngestedFile
from trainer import features


def test_encode_example_is_a_tf_example():
    values = {"image": b"\xff\xd8" + bytes(range(256)) * 600, "label": "ünïcode".encode(),
              "empty": b""}
    parsed = tf.train.Example.FromString(image_folder_beam.encode_example(values))
    assert {key: f.bytes_list.value[0] for key, f in parsed.features.feature.items()} == values
    expected = tf.train.Example()
    for key, value in values.items():
        expected.features.feature[key].bytes_list.value.append(value)
    assert parsed == expected


def test_serialized_example_uses_the_feature_keys():
    ingested = IngestedFile(
        relative_path="cats/a.jpg", label="cats", status=FileStatus.KEPT, reason="",
        content_hash="ab" * 32, image_bytes=b"jpeg", image_format="jpeg", width=1, height=1,
    )
    parsed = tf.train.Example.FromString(image_folder_beam.serialized_example(ingested))
    feature = parsed.features.feature
    assert feature[features.IMAGE_KEY].bytes_list.value == [b"jpeg"]
    assert feature[features.LABEL_KEY].bytes_list.value == [b"cats"]
    assert feature[features.PATH_KEY].bytes_list.value == [b"cats/a.jpg"]
    assert feature[features.HASH_KEY].bytes_list.value == [b"ab" * 32]


def test_write_examples_is_gzip_tfrecord_that_tf_reads(tmp_path):
    records = [os.urandom(n) for n in (0, 1, 1000, 300_000)]
    with beam.Pipeline() as pipeline:
        _ = pipeline | beam.Create(records) | image_folder_beam.WriteExamples(
            str(tmp_path / "data_tfrecord"))
    files = tf.io.gfile.glob(str(tmp_path / "data_tfrecord-*.gz"))
    assert files
    read = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    assert sorted(read) == sorted(records)


def test_the_beam_side_does_not_load_tensorflow():
    code = ("import sys, components.image_folder_beam; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
