"""Backbone embeddings: the head's input for every example, computed once by the Embedder.

The `Embedder` node (`components.embedder`) runs the Transform graph, then the
frozen backbone (and cut) and the head's pooling, over every example: exactly
what the head phase would otherwise compute from the images on each Trainer
run. This module is the one definition of what that takes and of the files it
writes: the settings the vectors depend on (`embedding_settings`), the model
(`EmbeddingModel`), the record format (`encode_records`) and its reader
(`read_split`), used by the Trainer's head phase.

Files: `<uri>/Split-<split>/*.gz`, TFRecord (gzip) of tf.Examples with
`embedding` (float list), `label` (bytes), `label_id` (int64, from the
Transform graph's vocabulary; -1 for a label outside it), `content_hash` and
`relative_path`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from trainer import classifier, export, features
from trainer.config import TrainingConfig

EMBEDDING_KEY = "embedding"
"""The pooled output of the frozen backbone (float list)."""
LABEL_ID_KEY = "label_id"
"""The label's index in the Transform graph's vocabulary (int64; -1 outside it)."""
URI_KEY = "_embeddings_uri"
"""Reserved `fn_args.custom_config` key: the Embedder's output URI, set by the Trainer's
executor (`components.embedder`) and removed by `trainer.model` before the settings are read."""
EMBEDDING_SETTINGS = ("backbone", "weights", "cut_layer", "image_size", "pooling")
"""What the vectors depend on; nothing else (a new dropout or learning rate keeps them)."""
_READ_BATCH_SIZE = 1024


def cached_inputs_apply(config: TrainingConfig) -> bool:
    """Whether training may run on cached frozen-backbone outputs (the Embedder's included).

    Not with augmentation (each epoch sees new pixels) or `cache_features: false`;
    the Trainer also checks at run time that the cache fits in memory.
    """
    return config.cache_features and not config.augmentation.enabled


def embedding_settings(config: TrainingConfig) -> dict[str, Any]:
    """The settings the vectors depend on, as the Embedder's execution properties.

    `cut_layer` is "" for none (an execution property cannot be None).
    """
    return {
        "backbone": config.backbone,
        "weights": config.weights,
        "cut_layer": config.cut_layer or "",
        "image_size": config.input_size,
        "pooling": config.head.pooling,
    }


def config_from_settings(settings: Mapping[str, Any]) -> TrainingConfig:
    """The `TrainingConfig` that builds the same backbone and pooling (the inverse)."""
    return TrainingConfig.from_dict({
        "backbone": settings["backbone"],
        "weights": settings["weights"],
        "cut_layer": settings["cut_layer"] or None,
        "image_size": int(settings["image_size"]),
        "head": {"pooling": settings["pooling"]},
    })


def split_dir(uri: str, split: str) -> str:
    """Where a split's files are, as TFX lays out a split artifact."""
    return os.path.join(uri, f"Split-{split}")


class EmbeddingModel:
    """Serialized raw tf.Examples -> the head's input vectors and the example's keys.

    The Transform graph, the frozen backbone in inference mode (and cut), then
    the head's parameter-free pooling: `trainer.classifier.build_parts`, as the
    Trainer builds it.
    """

    def __init__(self, config: TrainingConfig, transform_graph_uri: str) -> None:
        tf_transform_output = tft.TFTransformOutput(transform_graph_uri)
        num_classes = max(2, len(export.class_names(tf_transform_output)))
        self._parts = classifier.build_parts(config, num_classes)
        self._tft_layer = tf_transform_output.transform_features_layer()
        self._spec = {
            key: tf.io.FixedLenFeature([1], tf.string, default_value="")
            for key in (features.IMAGE_KEY, features.LABEL_KEY, features.PATH_KEY,
                        features.HASH_KEY)
        }
        self._embed = tf.function(
            self._embed_graph, input_signature=[tf.TensorSpec([None], tf.string)])

    @tf.autograph.experimental.do_not_convert
    def _embed_graph(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        raw = tf.io.parse_example(serialized, self._spec)
        transformed = self._tft_layer(
            {key: raw[key] for key in (features.IMAGE_KEY, features.LABEL_KEY)})
        parts = self._parts
        vectors = parts.pool(parts.base(transformed[features.TRANSFORMED_IMAGE_KEY],
                                        training=False))
        return {
            EMBEDDING_KEY: tf.cast(vectors, tf.float32),
            LABEL_ID_KEY: tf.reshape(transformed[features.TRANSFORMED_LABEL_KEY], [-1]),
            **{key: tf.reshape(raw[key], [-1])
               for key in (features.LABEL_KEY, features.HASH_KEY, features.PATH_KEY)},
        }

    def __call__(self, serialized: Sequence[bytes]) -> dict[str, np.ndarray]:
        """The vectors and keys of a batch of serialized examples, as numpy arrays."""
        outputs = self._embed(tf.constant(list(serialized), dtype=tf.string))
        return {key: value.numpy() for key, value in outputs.items()}


def encode_records(outputs: Mapping[str, np.ndarray]) -> list[bytes]:
    """One serialized tf.Example per row of `EmbeddingModel`'s outputs."""
    def record(row: int) -> bytes:
        def as_bytes(key: str) -> tf.train.Feature:
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[outputs[key][row]]))

        return tf.train.Example(features=tf.train.Features(feature={
            EMBEDDING_KEY: tf.train.Feature(
                float_list=tf.train.FloatList(value=outputs[EMBEDDING_KEY][row].reshape(-1))),
            LABEL_ID_KEY: tf.train.Feature(
                int64_list=tf.train.Int64List(value=[int(outputs[LABEL_ID_KEY][row])])),
            **{key: as_bytes(key)
               for key in (features.LABEL_KEY, features.HASH_KEY, features.PATH_KEY)},
        })).SerializeToString()

    return [record(row) for row in range(len(outputs[LABEL_ID_KEY]))]


def read_split(uri: str, split: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A split's vectors and label ids, by relative path; unknown labels left out.

    The order does not depend on how the Beam job sharded its output, so a
    seeded run trains the same way whatever the runner; it is the order in
    which the local ExampleGen writes the examples (by path), which the
    Trainer's image path reads (the content hash orders copies of one path).

    Args:
        uri: The Embedder's output (`embeddings` artifact) URI.
        split: The split to read.
        width: The vectors' length (the head's input).

    Returns:
        (vectors [n, width] float32, label ids [n] int64).

    Raises:
        ValueError: The split has no files or no examples.
    """
    files = sorted(tf.io.gfile.glob(os.path.join(split_dir(uri, split), "*")))
    if not files:
        raise ValueError(f"embeddings {uri}: no files for split {split!r}")
    spec = {
        EMBEDDING_KEY: tf.io.FixedLenFeature([width], tf.float32),
        LABEL_ID_KEY: tf.io.FixedLenFeature([], tf.int64),
        features.HASH_KEY: tf.io.FixedLenFeature([], tf.string),
        features.PATH_KEY: tf.io.FixedLenFeature([], tf.string),
    }
    batches = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(
        _READ_BATCH_SIZE).map(lambda batch: tf.io.parse_example(batch, spec))
    columns = {key: [] for key in spec}
    for batch in batches.as_numpy_iterator():
        for key in spec:
            columns[key].append(batch[key])
    if not columns[LABEL_ID_KEY]:
        raise ValueError(f"embeddings {uri}: split {split!r} holds no examples")
    merged = {key: np.concatenate(values) for key, values in columns.items()}
    order = np.lexsort((merged[features.HASH_KEY], merged[features.PATH_KEY]))
    known = order[merged[LABEL_ID_KEY][order] >= 0]
    return merged[EMBEDDING_KEY][known], merged[LABEL_ID_KEY][known]


def vector_width(uri: str, split: str) -> int:
    """The vectors' length (the head's input), read off a split's first record.

    Raises:
        ValueError: The split has no files or no examples.
    """
    files = sorted(tf.io.gfile.glob(os.path.join(split_dir(uri, split), "*")))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(1):
        example = tf.train.Example.FromString(record.numpy())
        return len(example.features.feature[EMBEDDING_KEY].float_list.value)
    raise ValueError(f"embeddings {uri}: split {split!r} holds no examples")
