"""The Trainer's input: examples read through the Transform graph.

Transform is not materialized, so the Trainer applies its graph on the fly:
raw tf.Examples -> decoded, resized, scaled images and label ids. The same graph
is inside the exported model.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from trainer import embeddings, export, features

_LABEL_COUNT_BATCH_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The train and eval examples of one Trainer run, and how to read them.

    Attributes:
        files: File patterns per split (features.TRAIN_SPLIT, features.EVAL_SPLIT).
        data_accessor: TFX's reader of the examples.
        tf_transform_output: The Transform graph and its vocabulary.
        embeddings_uri: The Embedder's output for these examples, or None
            (see `trainer.embeddings`).
    """

    files: dict[str, list[str]]
    data_accessor: tfx.components.DataAccessor
    tf_transform_output: tft.TFTransformOutput
    embeddings_uri: str | None = None

    @classmethod
    def from_fn_args(
        cls, fn_args: tfx.components.FnArgs, embeddings_uri: str | None = None
    ) -> TrainingData:
        return cls(
            files={
                features.TRAIN_SPLIT: list(fn_args.train_files),
                features.EVAL_SPLIT: list(fn_args.eval_files),
            },
            data_accessor=fn_args.data_accessor,
            tf_transform_output=tft.TFTransformOutput(fn_args.transform_graph_path),
            embeddings_uri=embeddings_uri,
        )

    @property
    def class_names(self) -> list[str]:
        """Class names in label-id order."""
        return export.class_names(self.tf_transform_output)

    def _raw_batches(
        self, split: str, batch_size: int, shuffle: bool = False, seed: int | None = None
    ) -> tf.data.Dataset:
        return self.data_accessor.tf_dataset_factory(
            self.files[split],
            tfxio.TensorFlowDatasetOptions(
                batch_size=batch_size, shuffle=shuffle, shuffle_seed=seed, num_epochs=1
            ),
            self.tf_transform_output.raw_metadata.schema,
        )

    def label_counts(self, split: str) -> np.ndarray:
        """Examples per class id in `split`, read without decoding any image.

        Raises:
            ValueError: The split has no examples.
        """
        counts = collections.Counter()
        for batch in self._raw_batches(split, _LABEL_COUNT_BATCH_SIZE):
            counts.update(tf.reshape(batch[features.LABEL_KEY], [-1]).numpy().tolist())
        if not counts:
            raise ValueError(f"no {split} examples found in {self.files[split]}")
        names = [name.encode() for name in self.class_names]
        unknown = sum(n for label, n in counts.items() if label not in names)
        if unknown:
            logging.warning(
                "%d %s examples have labels outside the label vocabulary (%s) and are left "
                "out of training: Transform saw no such label in the data it analysed",
                unknown, split, ", ".join(self.class_names),
            )
        return np.array([counts.get(name, 0) for name in names], dtype=np.int64)

    def embeddings(self, split: str, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The Embedder's vectors ([n, width]) and label ids of `split`.

        Examples whose label is not in the vocabulary are left out, as in
        `images_and_labels`.

        Raises:
            ValueError: No embeddings were given, or the split has none.
        """
        if self.embeddings_uri is None:
            raise ValueError("no embeddings were given to this Trainer run")
        return embeddings.read_split(self.embeddings_uri, split, width)

    def images_and_labels(
        self, split: str, batch_size: int, shuffle: bool = False, seed: int | None = None
    ) -> tf.data.Dataset:
        """Batches of (transformed images, label ids), in file order unless `shuffle`.

        Examples whose label is not in the vocabulary (id -1) are left out
        (`label_counts` reports them).
        """
        tft_layer = self.tf_transform_output.transform_features_layer()

        @tf.autograph.experimental.do_not_convert  # nothing to convert; tracing is faster
        def transform(raw):
            transformed = tft_layer(
                {key: raw[key] for key in (features.IMAGE_KEY, features.LABEL_KEY)}
            )
            labels = transformed[features.TRANSFORMED_LABEL_KEY]
            known = labels >= 0
            return (
                tf.boolean_mask(transformed[features.TRANSFORMED_IMAGE_KEY], known),
                tf.boolean_mask(labels, known),
            )

        return self._raw_batches(split, batch_size, shuffle, seed).map(
            transform, num_parallel_calls=tf.data.AUTOTUNE
        )
