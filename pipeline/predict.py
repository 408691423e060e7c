"""Classifies image files with a pushed model through its `serving_default` signature."""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from trainer import export


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One file's result: a label and score, or the error that stopped it."""

    path: str
    label: str | None = None
    score: float | None = None
    error: str | None = None


def resolve_model_dir(path: str) -> str:
    """A SavedModel directory: `path` itself, or its newest numeric version.

    Raises:
        FileNotFoundError: Neither `path` nor any version below it holds a SavedModel.
    """
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    if tf.io.gfile.isdir(path):
        versions = [
            int(name.rstrip("/"))
            for name in tf.io.gfile.listdir(path)
            if name.rstrip("/").isdigit()
            and tf.io.gfile.exists(os.path.join(path, name.rstrip("/"), "saved_model.pb"))
        ]
        if versions:
            return os.path.join(path, str(max(versions)))
    raise FileNotFoundError(
        f"no SavedModel at {path!r}: give a version directory or a model directory holding them"
    )


def predict_files(model_dir: str, paths: list[str]) -> list[Prediction]:
    """Classifies each file; a file that fails gets its error, the rest carry on."""
    serve = tf.saved_model.load(resolve_model_dir(model_dir)).signatures[export.SERVING_DEFAULT]
    predictions = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                image_bytes = f.read()
            outputs = serve(**{export.IMAGE_BYTES_INPUT: tf.constant([image_bytes])})
        except (OSError, tf.errors.InvalidArgumentError) as error:
            message = getattr(error, "message", None) or str(error)
            predictions.append(Prediction(path, error=message.strip().splitlines()[0]))
            continue
        predictions.append(
            Prediction(
                path,
                label=outputs[export.LABEL_OUTPUT][0].numpy().decode(),
                score=float(outputs[export.SCORE_OUTPUT][0]),
            )
        )
    return predictions
