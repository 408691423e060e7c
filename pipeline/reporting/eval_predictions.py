"""The trained model re-run over the eval split: a confusion matrix of our own count,
per-class figures, and the most confident mistakes with their images, for the report.

TFMA's figures (`components.tfma_results`) decide the gate; this re-run is what
lets the report show which images were wrong.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from components import model_card
from trainer import export, features

DEFAULT_MAX_MISCLASSIFIED = 60
_PREDICT_BATCH_SIZE = 64


def _split_files(split_dir: str) -> list[str]:
    return sorted(f for f in tf.io.gfile.glob(os.path.join(split_dir, "*")) if not f.endswith("/"))


def tfrecord_dataset(split_dir: str) -> tf.data.Dataset:
    files = _split_files(split_dir)
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    return tf.data.TFRecordDataset(files, compression_type=compression)


def read_examples(split_dir: str) -> Iterator[tf.train.Example]:
    for record in tfrecord_dataset(split_dir).as_numpy_iterator():
        yield tf.train.Example.FromString(record)



@dataclasses.dataclass(frozen=True)
class ClassMetrics:
    """One class on the eval split; precision (recall) is None when nothing was
    predicted as (labelled) this class."""

    name: str
    support: int
    predicted: int
    correct: int

    @property
    def precision(self) -> float | None:
        return self.correct / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.correct / self.support if self.support else None


@dataclasses.dataclass(frozen=True)
class Misclassified:
    """An eval image the model got wrong."""

    path: str
    true_label: str
    predicted_label: str
    score: float
    image: bytes


@dataclasses.dataclass(frozen=True)
class EvalSummary:
    """The trained model run over the eval split.

    Attributes:
        model_dir: The SavedModel that was run.
        split: The split it was run over.
        model_classes: Class names in model-output order (the order of `scores`).
        classes: Every class, the model's and any eval label it lacks, sorted.
        confusion: confusion[true][predicted] counts, indexed like `classes`.
        misclassified: The most confident mistakes, at most the number asked for.
        misclassified_total: All mistakes.
        signatures: The SavedModel's signatures.
    """

    model_dir: str
    split: str
    model_classes: tuple[str, ...]
    classes: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    misclassified: tuple[Misclassified, ...]
    misclassified_total: int
    signatures: tuple[model_card.SignatureInfo, ...]

    @property
    def examples(self) -> int:
        return int(sum(map(sum, self.confusion)))

    @property
    def accuracy(self) -> float | None:
        correct = sum(self.confusion[i][i] for i in range(len(self.classes)))
        return correct / self.examples if self.examples else None

    @property
    def per_class(self) -> tuple[ClassMetrics, ...]:
        matrix = np.array(self.confusion, dtype=np.int64).reshape(len(self.classes), -1)
        return tuple(
            ClassMetrics(name, int(matrix[i].sum()), int(matrix[:, i].sum()), int(matrix[i, i]))
            for i, name in enumerate(self.classes)
        )


def evaluate_model(
    model_dir: str, split_dir: str, max_misclassified: int = DEFAULT_MAX_MISCLASSIFIED
) -> EvalSummary:
    """Runs the SavedModel's `serving_examples` over a split's tf.Examples.

    Args:
        model_dir: A SavedModel exported by `trainer.export`.
        split_dir: A `Split-<name>` directory of (GZIP) TFRecords of tf.Examples.
        max_misclassified: Most mistakes kept (with their images), the most
            confident first.

    Returns:
        Confusion matrix, mistakes and the model's signatures.
    """
    loaded = tf.saved_model.load(model_dir)
    serve = loaded.signatures[export.SERVING_EXAMPLES]
    (input_name,) = serve.structured_input_signature[1]
    spec = {
        key: tf.io.FixedLenFeature([], tf.string, default_value="")
        for key in (features.IMAGE_KEY, features.LABEL_KEY, features.PATH_KEY)
    }
    model_classes: list[str] = []
    pairs: list[tuple[str, str]] = []
    kept: list[tuple[float, int, Misclassified]] = []  # min-heap on score
    counter = itertools.count()
    for batch in tfrecord_dataset(split_dir).batch(_PREDICT_BATCH_SIZE):
        outputs = serve(**{input_name: batch})
        parsed = tf.io.parse_example(batch, spec)
        if not model_classes:
            model_classes = [c.decode() for c in outputs[export.CLASSES_OUTPUT][0].numpy()]
        rows = zip(
            parsed[features.LABEL_KEY].numpy(),
            outputs[export.LABEL_OUTPUT].numpy(),
            outputs[export.SCORE_OUTPUT].numpy(),
            parsed[features.PATH_KEY].numpy(),
            parsed[features.IMAGE_KEY].numpy(),
            strict=True,
        )
        for true_label, predicted, score, path, image in rows:
            true_label, predicted = true_label.decode(), predicted.decode()
            pairs.append((true_label, predicted))
            if true_label != predicted and max_misclassified > 0:
                item = (
                    float(score),
                    next(counter),
                    Misclassified(path.decode(), true_label, predicted, float(score), image),
                )
                if len(kept) < max_misclassified:
                    heapq.heappush(kept, item)
                else:
                    heapq.heappushpop(kept, item)
    classes = sorted({*model_classes, *(label for pair in pairs for label in pair)})
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for true_label, predicted in pairs:
        matrix[index[true_label], index[predicted]] += 1
    return EvalSummary(
        model_dir=model_dir,
        split=os.path.basename(split_dir.rstrip("/")).removeprefix("Split-"),
        model_classes=tuple(model_classes),
        classes=tuple(classes),
        confusion=tuple(tuple(int(n) for n in row) for row in matrix),
        misclassified=tuple(item[2] for item in sorted(kept, key=lambda item: (-item[0], item[1]))),
        misclassified_total=sum(1 for true_label, predicted in pairs if true_label != predicted),
        signatures=model_card.read_signatures(model_dir),
    )
