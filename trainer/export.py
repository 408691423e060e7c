"""Exports the trained classifier as a SavedModel with the Transform graph inside.

Signatures:
    serving_default: a batch of raw encoded images (what TF Serving's REST API
        receives as ``{"instances": [{"b64": "..."}]}``) -> class names, scores,
        and the top label and score.
    serving_examples: a batch of serialized tf.Examples -> the same outputs.
    transform_features: a batch of serialized tf.Examples -> transformed
        features; the Evaluator uses it to get integer labels.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from trainer import features

SERVING_DEFAULT = "serving_default"
SERVING_EXAMPLES = "serving_examples"
TRANSFORM_FEATURES = "transform_features"
IMAGE_BYTES_INPUT = "image_bytes"
SCORES_OUTPUT = "scores"
CLASSES_OUTPUT = "classes"
LABEL_OUTPUT = "label"
SCORE_OUTPUT = "score"


def class_names(tf_transform_output: tft.TFTransformOutput) -> list[str]:
    """Class names in model-output order: the label vocabulary."""
    return [
        name.decode() if isinstance(name, bytes) else name
        for name in tf_transform_output.vocabulary_by_name(features.LABEL_VOCABULARY)
    ]


class _ServingModule(tf.Module):
    """Holds the Transform layer, the classifier and the class names."""

    def __init__(
        self, classifier: tf.keras.Model, tf_transform_output: tft.TFTransformOutput
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.tft_layer = tf_transform_output.transform_features_layer()
        self.class_names = tf.Variable(class_names(tf_transform_output), trainable=False)
        raw_spec = tf_transform_output.raw_feature_spec()
        self._example_spec = {features.IMAGE_KEY: raw_spec[features.IMAGE_KEY]}
        self._labelled_example_spec = {
            key: raw_spec[key] for key in (features.IMAGE_KEY, features.LABEL_KEY)
        }

    def _classify(self, raw_features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        transformed = self.tft_layer(raw_features)
        scores = self.classifier(transformed[features.TRANSFORMED_IMAGE_KEY], training=False)
        batch_size = tf.shape(scores)[0]
        top = tf.argmax(scores, axis=1)
        return {
            SCORES_OUTPUT: scores,
            CLASSES_OUTPUT: tf.tile(self.class_names[tf.newaxis, :], [batch_size, 1]),
            LABEL_OUTPUT: tf.gather(self.class_names, top),
            SCORE_OUTPUT: tf.reduce_max(scores, axis=1),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)])
    def serve_image_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._classify({features.IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._classify(tf.io.parse_example(examples, self._example_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.tft_layer(tf.io.parse_example(examples, self._labelled_example_spec))


def export_serving_model(
    classifier: tf.keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    export_dir: str,
) -> None:
    """Saves `classifier` behind the Transform graph with the three signatures."""
    module = _ServingModule(classifier, tf_transform_output)
    tf.saved_model.save(
        module,
        export_dir,
        signatures={
            SERVING_DEFAULT: module.serve_image_bytes,
            SERVING_EXAMPLES: module.serve_examples,
            TRANSFORM_FEATURES: module.transform_features,
        },
    )
