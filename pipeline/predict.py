"""Classifies image files with a pushed model through its `serving_default` signature.

The model may be given as a serving directory (the one model under it), a
model directory (its newest version), a version directory or any SavedModel
exported by Transferline. Images may be files or folders (searched
recursively; hidden files and folders are left out). Files are classified in
batches; a file that cannot be read or is rejected by the model (empty, not an
image, truncated, over the model's pixel budget) gets its own error and the
rest carry on. A FIFO or device is never opened: it gets the error
"not a regular file", as in ingestion and `scan`.

The command's tab-separated output escapes each field with `tsv_field`
(backslash, tab, newline and carriage return as ``\\``, ``\t``, ``\n``,
``\r``), so a file name holding them still takes one line of fields; `--json`
gives every name exactly.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from components import file_systems
from trainer import export
from trainer.errors import one_line
from trainer.progress_events import Progress

DEFAULT_BATCH_SIZE = 32
MAX_FILE_BYTES = 100 * 2**20
_SAVED_MODEL_PB = "saved_model.pb"
_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One file's result: the top label and score (and the top k), or the error that stopped it."""

    path: str
    label: str | None = None
    score: float | None = None
    top_k: tuple[tuple[str, float], ...] = ()
    error: str | None = None

    def to_json(self) -> dict:
        """A JSON-ready dict; `top_k` as a list of {label, score}."""
        return {
            "path": self.path,
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": label, "score": score} for label, score in self.top_k],
            "error": self.error,
        }


def _versions(path: str) -> list[int]:
    if not tf.io.gfile.isdir(path):
        return []
    return sorted(
        int(name.rstrip("/"))
        for name in tf.io.gfile.listdir(path)
        if name.rstrip("/").isdigit()
        and tf.io.gfile.exists(os.path.join(path, name.rstrip("/"), _SAVED_MODEL_PB))
    )


def resolve_model_dir(path: str) -> str:
    """A SavedModel directory: `path` itself, its newest version, or its one model's.

    Raises:
        FileNotFoundError: `path` holds no SavedModel, or a serving directory
            holds several models (the message lists them).
    """
    if tf.io.gfile.exists(os.path.join(path, _SAVED_MODEL_PB)):
        return path
    versions = _versions(path)
    if versions:
        return os.path.join(path, str(versions[-1]))
    if tf.io.gfile.isdir(path):
        models = sorted(
            os.path.join(path, name.rstrip("/"))
            for name in tf.io.gfile.listdir(path)
            if not name.startswith(".") and _versions(os.path.join(path, name.rstrip("/")))
        )
        if len(models) == 1:
            return resolve_model_dir(models[0])
        if models:
            raise FileNotFoundError(
                f"{path!r} serves {len(models)} models; give one of: {', '.join(models)}"
            )
    raise FileNotFoundError(
        f"no SavedModel at {path!r}: give a serving directory, a model directory, "
        "a version directory or a SavedModel"
    )


def find_image_files(paths: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """(path, error) for each file named or found in a named folder, in order.

    A folder is searched recursively, sorted, leaving out hidden files and
    folders (names starting with '.'); a path that does not exist gets an error.
    """
    for path in paths:
        if os.path.isdir(path):
            for root, folders, files in os.walk(path):
                folders[:] = sorted(f for f in folders if not f.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield os.path.join(root, name), None
        elif os.path.exists(path):
            yield path, None
        else:
            yield path, "no such file or folder"


class UnreadableModel(ValueError):
    """The model directory's SavedModel cannot be loaded, or has no `serving_default`."""


def _read(path: str) -> bytes:
    """The bytes of a regular file; a FIFO or device is never opened.

    Raises:
        OSError: It is not a regular file (the message is `NOT_A_REGULAR_FILE`),
            cannot be read, or is larger than `MAX_FILE_BYTES`.
    """
    try:
        handle = file_systems.LOCAL.open_regular(path)
    except file_systems.NotARegularFile:
        raise OSError(file_systems.NOT_A_REGULAR_FILE) from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise OSError(f"file too large: {size} bytes, more than {MAX_FILE_BYTES}")
        return handle.read()


def tsv_field(text: str) -> str:
    """`text` as one field of tab-separated output: backslash, tab, newline, CR escaped.

    ``\\`` stands for a backslash, ``\t`` for a tab, ``\n`` for a newline and
    ``\r`` for a carriage return, so the field holds no separator and reads back
    unambiguously.
    """
    return text.translate(_TSV_ESCAPES)


def _load_serving_default(model_dir: str):
    """The `serving_default` signature of the SavedModel in `model_dir`.

    Raises:
        UnreadableModel: The SavedModel cannot be loaded (a damaged, empty or
            foreign `saved_model.pb`, missing variables) or lacks the signature.
    """
    try:
        loaded = tf.saved_model.load(model_dir)
    except (OSError, ValueError):
        # TensorFlow says "Cannot parse file" or, for an empty or foreign
        # protocol buffer, that a `tags=` argument is needed for its 0 MetaGraphs.
        raise UnreadableModel(
            f"{os.path.join(model_dir, _SAVED_MODEL_PB)}: not a readable SavedModel "
            "(the file is damaged, empty or not a SavedModel)"
        ) from None
    except tf.errors.OpError as error:
        raise UnreadableModel(
            f"{model_dir}: not a readable SavedModel ({one_line(error)})"
        ) from error
    if export.SERVING_DEFAULT not in loaded.signatures:
        raise UnreadableModel(
            f"{model_dir}: the SavedModel has no {export.SERVING_DEFAULT} signature"
        )
    return loaded.signatures[export.SERVING_DEFAULT]


def model_error_message(error: tf.errors.OpError) -> str:
    """The model's one-line reason, e.g. `empty input (0 bytes)` or `Invalid PNG data...`."""
    text = error.message or str(error)
    asserted = re.search(r"assertion failed: \[(.*?)\]\n", text + "\n", re.DOTALL)
    if asserted:
        return re.sub(r"^[\w.]+\[\d+\]: ", "", asserted.group(1).replace("\\'", "'"))
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip()
        and not line.startswith(("Graph execution error", "Detected at node", "  File", "\t"))
        and not line.strip().startswith(("<stack traces", "[["))
    ]
    return lines[-1] if lines else type(error).__name__


class Predictor:
    """A loaded model's `serving_default`, applied to encoded images in batches."""

    def __init__(self, model_path: str) -> None:
        """Loads the model at `model_path` (see `resolve_model_dir`).

        Raises:
            FileNotFoundError: No SavedModel at `model_path`.
            UnreadableModel: The SavedModel there cannot be loaded.
        """
        self.model_dir = resolve_model_dir(model_path)
        self._serve = _load_serving_default(self.model_dir)

    def _run(self, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        outputs = self._serve(**{export.IMAGE_BYTES_INPUT: tf.constant(images)})
        return outputs[export.SCORES_OUTPUT].numpy(), outputs[export.CLASSES_OUTPUT].numpy()

    def classify(self, paths: list[str], images: list[bytes], top_k: int) -> list[Prediction]:
        """One Prediction per image; if the batch fails, each image is tried alone."""
        try:
            scores, classes = self._run(images)
        except tf.errors.InvalidArgumentError:
            if len(images) == 1:
                raise
            return [p for path, image in zip(paths, images, strict=True)
                    for p in self._classify_one(path, image, top_k)]
        return [_prediction(path, s, c, top_k)
                for path, s, c in zip(paths, scores, classes, strict=True)]

    def _classify_one(self, path: str, image: bytes, top_k: int) -> list[Prediction]:
        try:
            return self.classify([path], [image], top_k)
        except tf.errors.InvalidArgumentError as error:
            return [Prediction(path, error=model_error_message(error))]


def _prediction(path: str, scores: np.ndarray, classes: np.ndarray, top_k: int) -> Prediction:
    order = np.argsort(-scores, kind="stable")[:top_k]
    ranked = tuple((classes[i].decode(), float(scores[i])) for i in order)
    return Prediction(path, label=ranked[0][0], score=ranked[0][1], top_k=ranked)


def _no_progress(event: Progress) -> None:  # noqa: ARG001
    return None


def predict_files(
    model_path: str,
    paths: Sequence[str],
    top_k: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[Progress], None] = _no_progress,
) -> list[Prediction]:
    """Classifies each image file (folders searched); a file that fails gets its error.

    Args:
        model_path: Serving, model or version directory, or a SavedModel.
        paths: Image files and folders.
        top_k: How many of the best classes each Prediction lists.
        batch_size: Images per call of the model.
        on_progress: Called after each batch with the files done out of all found.

    Raises:
        FileNotFoundError: No model at `model_path`.
        UnreadableModel: The model there cannot be loaded (a ValueError).
        ValueError: `top_k` or `batch_size` is below 1.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    predictor = Predictor(model_path)
    results: dict[int, Prediction] = {}
    pending: list[tuple[int, str, bytes]] = []

    def flush() -> None:
        indices, batch_paths, images = zip(*pending, strict=True)
        for index, prediction in zip(
            indices, predictor.classify(list(batch_paths), list(images), top_k), strict=True
        ):
            results[index] = prediction
        pending.clear()
        on_progress(Progress("classified", len(results), len(found), "images"))

    found = list(find_image_files(paths))
    on_progress(Progress("classified", 0, len(found), "images"))
    for index, (path, error) in enumerate(found):
        if error is None:
            try:
                pending.append((index, path, _read(path)))
            except OSError as read_error:
                error = read_error.strerror or str(read_error)
        if error is not None:
            results[index] = Prediction(path, error=error)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    on_progress(Progress("classified", len(results), len(found), "images"))
    return [results[index] for index in sorted(results)]
