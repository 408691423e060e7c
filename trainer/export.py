"""Exports the trained classifier as a SavedModel with the Transform graph inside.

Signatures:
    serving_default: a batch of raw encoded images (what TF Serving's REST API
        receives as ``{"instances": [{"b64": "..."}]}``) -> class names, scores,
        and the top label and score.
    serving_examples: a batch of serialized tf.Examples -> the same outputs; the
        Evaluator uses it, with the raw ``label`` feature as the label.
    transform_features: a batch of serialized, labelled tf.Examples -> the
        transformed features (the image exactly as the classifier sees it).

Every signature checks its encoded images before decoding any: an empty input,
bytes that are not a JPEG, PNG, GIF or BMP, a corrupt header, a truncated JPEG,
or an image the decoder would allocate more pixels for than the model's budget
(every frame of a GIF counted) fails the request with an InvalidArgument error
naming the image and the problem, so a server never decodes (or runs out of
memory on) a decompression bomb; see `trainer.image_checks`.

Only the classifier's variables are saved with the signatures, not the Keras
model object and its per-layer functions, so the SavedModel is smaller and loads
faster (in the Evaluator, in TF Serving, in `predict`).

`assets.extra/classes.txt` lists the class names in the order of `scores`;
`assets.extra/training.json`, when the Trainer gives it, records the training
settings and history (the Pusher's model card reads it). With
`ExportConfig.tflite`, `classifier.tflite` is written beside the graph (in
`assets.extra/`, which TF Serving ignores) and checked to agree with the
SavedModel; see `export_tflite`.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tf_keras.src.saving.legacy.saved_model import utils as keras_saved_model_utils

from trainer import features
from trainer.config import DEFAULT_TFLITE_TOLERANCE, ExportConfig
from trainer.errors import one_line
from trainer.image_checks import check_encoded_images

SERVING_DEFAULT = "serving_default"
SERVING_EXAMPLES = "serving_examples"
TRANSFORM_FEATURES = "transform_features"
IMAGE_BYTES_INPUT = "image_bytes"
EXAMPLES_INPUT = "examples"
SCORES_OUTPUT = "scores"
CLASSES_OUTPUT = "classes"
LABEL_OUTPUT = "label"
SCORE_OUTPUT = "score"

ASSETS_EXTRA = "assets.extra"
CLASSES_FILE = "classes.txt"
"""In `assets.extra/`: the class names, one a line, in the order of `scores`."""
TFLITE_FILE = "classifier.tflite"
TFLITE_INFO_FILE = "classifier.tflite.json"
TRAINING_FILE = "training.json"
"""In `assets.extra/`: the training settings and history the model came from."""

_EXAMPLE_IMAGES = f"{EXAMPLES_INPUT}.{features.IMAGE_KEY}"
"""How errors name the images of a batch of tf.Examples."""


class ExportError(RuntimeError):
    """The exported model does not do what it must (e.g. TFLite disagrees)."""


def class_names(tf_transform_output: tft.TFTransformOutput) -> list[str]:
    """Class names in model-output order: the label vocabulary."""
    return [
        name.decode() if isinstance(name, bytes) else name
        for name in tf_transform_output.vocabulary_by_name(features.LABEL_VOCABULARY)
    ]


# ------------------------------------------------------------------- the module


class _Untracked:
    """Holds an object out of sight of SavedModel's object tracking."""

    def __init__(self, value: object) -> None:
        self.value = value


class _ServingModule(tf.Module):
    """Holds the Transform layer, the classifier's variables and the class names.

    The signatures are traced without AutoGraph: they hold no Python control
    flow on tensors, so converting the Transform layer and every function they
    call would only add to the time an export takes.
    """

    def __init__(
        self,
        classifier: tf.keras.Model,
        tf_transform_output: tft.TFTransformOutput,
        max_image_pixels: int,
        track_keras_model: bool = False,
    ) -> None:
        super().__init__()
        if track_keras_model:
            self.classifier = classifier
        else:
            self.classifier_variables = list(classifier.variables)
        self.tft_layer = tf_transform_output.transform_features_layer()
        self.class_names = tf.Variable(class_names(tf_transform_output), trainable=False)
        raw_spec = tf_transform_output.raw_feature_spec()
        self._example_spec = {features.IMAGE_KEY: raw_spec[features.IMAGE_KEY]}
        self._labelled_example_spec = {
            key: raw_spec[key] for key in (features.IMAGE_KEY, features.LABEL_KEY)
        }
        # Each piece is traced once and called by every signature that needs it,
        # instead of tracing the backbone, the Transform graph and the checks
        # again for each signature.
        images = tf.TensorSpec([None], tf.string)
        self._check = _Untracked(tf.function(
            lambda image_bytes, input_name: check_encoded_images(
                image_bytes, max_image_pixels, input_name),
            input_signature=[images, tf.TensorSpec([], tf.string)], autograph=False,
        ))
        self._classify = _Untracked(tf.function(
            functools.partial(self._classify_images, classifier),
            input_signature=[images], autograph=False,
        ))

    def _checked(self, image_bytes: tf.Tensor, input_name: str) -> tf.Tensor:
        """`image_bytes` flattened to [batch], once the checks passed."""
        return self._check.value(tf.reshape(image_bytes, [-1]), tf.constant(input_name))

    def _classify_images(
        self, classifier: tf.keras.Model, image_bytes: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """Checked encoded images [batch] -> class scores and the top class."""
        transformed = self.tft_layer({features.IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])})
        scores = classifier(transformed[features.TRANSFORMED_IMAGE_KEY], training=False)
        batch_size = tf.shape(scores)[0]
        top = tf.argmax(scores, axis=1)
        return {
            SCORES_OUTPUT: scores,
            CLASSES_OUTPUT: tf.tile(self.class_names[tf.newaxis, :], [batch_size, 1]),
            LABEL_OUTPUT: tf.gather(self.class_names, top),
            SCORE_OUTPUT: tf.reduce_max(scores, axis=1),
        }

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)], autograph=False
    )
    def serve_image_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._classify.value(self._checked(image_bytes, IMAGE_BYTES_INPUT))

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)], autograph=False
    )
    def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        raw = tf.io.parse_example(examples, self._example_spec)
        return self._classify.value(self._checked(raw[features.IMAGE_KEY], _EXAMPLE_IMAGES))

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)], autograph=False
    )
    def transform_features(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        raw = tf.io.parse_example(examples, self._labelled_example_spec)
        images = self._checked(raw[features.IMAGE_KEY], _EXAMPLE_IMAGES)
        return self.tft_layer({**raw, features.IMAGE_KEY: tf.reshape(images, [-1, 1])})


def export_serving_model(
    classifier: tf.keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    export_dir: str,
    settings: ExportConfig = ExportConfig(),
    *,
    tflite_check_images: Sequence[bytes] = (),
    training_record: Mapping[str, Any] | None = None,
) -> None:
    """Saves `classifier` behind the Transform graph with the three signatures.

    Args:
        classifier: Transformed image -> class scores.
        tf_transform_output: The Transform output the classifier was trained on.
        export_dir: The SavedModel directory to write.
        settings: The pixel budget of one input image (see module docstring)
            and whether to write a TFLite model too (see `export_tflite`).
        tflite_check_images: Encoded images the TFLite model is checked on;
            generated ones when empty.
        training_record: JSON-safe facts about training (e.g. ``config`` and
            ``history``), written to `assets.extra/training.json`.

    Raises:
        ValueError: A setting is impossible (it is named).
        ExportError: The TFLite model cannot be made or disagrees with the SavedModel.
    """
    settings.validate()
    max_pixels = settings.max_image_pixels
    try:
        _save(_ServingModule(classifier, tf_transform_output, max_pixels), export_dir)
    except (AssertionError, ValueError) as error:
        # A backbone holding resources other than variables (e.g. a TF-Hub
        # module with tables) needs the whole Keras object graph saved.
        logging.warning("Saving variables only failed (%s); saving the Keras model.", error)
        if tf.io.gfile.exists(export_dir):
            tf.io.gfile.rmtree(export_dir)
        _save(_ServingModule(classifier, tf_transform_output, max_pixels, True), export_dir)
    tf.io.gfile.makedirs(os.path.join(export_dir, ASSETS_EXTRA))
    with tf.io.gfile.GFile(os.path.join(export_dir, ASSETS_EXTRA, CLASSES_FILE), "w") as f:
        f.write("".join(f"{name}\n" for name in class_names(tf_transform_output)))
    if training_record is not None:
        with tf.io.gfile.GFile(os.path.join(export_dir, ASSETS_EXTRA, TRAINING_FILE), "w") as f:
            json.dump(training_record, f, indent=2)
    if settings.tflite:
        # Generated check images stay within the pixel budget the SavedModel enforces.
        side = min(classifier.input_shape[1], math.isqrt(max_pixels))
        export_tflite(
            classifier, tf_transform_output, export_dir,
            list(tflite_check_images) or _generated_images(side),
            tolerance=settings.tflite_tolerance,
        )


def read_class_names(export_dir: str) -> list[str]:
    """The class names an exported model scores, in output order.

    Raises:
        FileNotFoundError: `export_dir` has no `assets.extra/classes.txt`.
    """
    path = os.path.join(export_dir, ASSETS_EXTRA, CLASSES_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: not a model exported by Transferline")
    with tf.io.gfile.GFile(path) as f:
        return f.read().splitlines()


def read_training_record(export_dir: str) -> dict[str, Any]:
    """`assets.extra/training.json` of an exported model; {} when it has none."""
    path = os.path.join(export_dir, ASSETS_EXTRA, TRAINING_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _save(module: _ServingModule, export_dir: str) -> None:
    # The Transform layer is a Keras model: saving it as one would trace its
    # call, through AutoGraph, into functions no signature uses. Its tables and
    # assets are saved either way.
    with keras_saved_model_utils.keras_option_scope(save_traces=False):
        tf.saved_model.save(
            module,
            export_dir,
            signatures={
                SERVING_DEFAULT: module.serve_image_bytes,
                SERVING_EXAMPLES: module.serve_examples,
                TRANSFORM_FEATURES: module.transform_features,
            },
        )


# ------------------------------------------------------------------------ TFLite


def export_tflite(
    classifier: tf.keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    export_dir: str,
    check_images: Sequence[bytes] = (),
    tolerance: float = DEFAULT_TFLITE_TOLERANCE,
) -> str:
    """Writes the classifier as TFLite beside the SavedModel and checks it agrees.

    TFLite has no string or image-decoding ops, so the TFLite model is the
    float part only: it takes the transformed image (``image_xf``: decoded RGB,
    resized to the model's square with bilinear interpolation, scaled as the
    backbone expects; what the SavedModel's `transform_features` signature
    returns) and outputs class scores in the order of `classes` in
    `classifier.tflite.json`.

    Args:
        classifier: Transformed image -> class scores.
        tf_transform_output: Gives the class names and the preprocessing used
            to check agreement.
        export_dir: A SavedModel written by `export_serving_model`.
        check_images: Encoded images to compare the two models on; a few
            generated ones when empty.
        tolerance: Largest accepted absolute difference of any class score.

    Returns:
        The path of the TFLite file.

    Raises:
        ExportError: The converter fails, or scores differ by more than
            `tolerance`; the TFLite files are then removed.
    """
    image_shape = classifier.input_shape[1:]
    run = tf.function(
        lambda images: classifier(images, training=False),
        input_signature=[
            tf.TensorSpec([None, *image_shape], tf.float32, name=features.TRANSFORMED_IMAGE_KEY)
        ],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [run.get_concrete_function()], classifier
    )
    # Convert the function's frozen graph directly. Lowered through a SavedModel
    # (the converter's default when given the Keras model), it would first save
    # the whole Keras object graph with every layer's traced call functions to a
    # temporary directory and load it back, only to freeze the same graph.
    converter.experimental_lower_to_saved_model = False
    try:
        model_bytes = converter.convert()
    except Exception as error:  # noqa: BLE001 (the converter raises many types)
        raise ExportError(
            f"TFLite conversion of the classifier failed ({one_line(error)}); "
            "set training.export.tflite: false to export the SavedModel only"
        ) from error
    directory = os.path.join(export_dir, ASSETS_EXTRA)
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, TFLITE_FILE)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(model_bytes)
    with tf.io.gfile.GFile(os.path.join(directory, TFLITE_INFO_FILE), "w") as f:
        json.dump(
            {
                "input": features.TRANSFORMED_IMAGE_KEY,
                "input_shape": [1, *image_shape],
                "classes": class_names(tf_transform_output),
                "preprocessing": "decode to RGB, resize to the input size (bilinear), scale as "
                "the backbone expects: the SavedModel's transform_features signature",
            },
            f,
            indent=2,
        )
    images = list(check_images) or _generated_images(image_shape[0])
    difference = tflite_max_difference(export_dir, tf_transform_output, images)
    if not difference <= tolerance:  # NaN disagrees too
        for written in (path, os.path.join(directory, TFLITE_INFO_FILE)):
            tf.io.gfile.remove(written)
        raise ExportError(
            f"{path}: the TFLite model disagrees with the SavedModel: class scores differ by "
            f"up to {difference:.2e} on {len(images)} test images, more than "
            f"training.export.tflite_tolerance={tolerance:g}; raise the tolerance or set "
            "training.export.tflite: false"
        )
    logging.info("TFLite model %s agrees with the SavedModel (max diff %.2e).", path, difference)
    return path


def tflite_max_difference(
    export_dir: str, tf_transform_output: tft.TFTransformOutput, image_bytes: Sequence[bytes]
) -> float:
    """Largest absolute difference between TFLite and `serving_default` scores.

    The SavedModel gets the encoded images; TFLite gets them transformed by
    the same Transform graph.
    """
    serve = tf.saved_model.load(export_dir).signatures[SERVING_DEFAULT]
    expected = serve(**{IMAGE_BYTES_INPUT: tf.constant(list(image_bytes))})[SCORES_OUTPUT]
    transformed = tf_transform_output.transform_features_layer()(
        {features.IMAGE_KEY: tf.reshape(tf.constant(list(image_bytes)), [-1, 1])}
    )[features.TRANSFORMED_IMAGE_KEY].numpy()
    interpreter = tf.lite.Interpreter(
        model_path=os.path.join(export_dir, ASSETS_EXTRA, TFLITE_FILE)
    )
    interpreter.allocate_tensors()
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    difference = 0.0
    for image, scores in zip(transformed, expected.numpy(), strict=True):
        interpreter.set_tensor(input_detail["index"], image[np.newaxis].astype(np.float32))
        interpreter.invoke()
        got = interpreter.get_tensor(output_detail["index"])[0]
        difference = max(difference, float(np.max(np.abs(got - scores))))
    return difference


def _generated_images(size: int, count: int = 4) -> list[bytes]:
    """A few textured JPEG and PNG images (for checks that need some)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for n in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG" if n % 2 else "JPEG")
        images.append(buffer.getvalue())
    return images
