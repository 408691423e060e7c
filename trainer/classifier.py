"""The classifier: a pretrained backbone, then a new head.

`build_parts` builds the three models training works on: the frozen backbone
(`trainer.backbones`), the head (a parameter-free pooling layer, then
`head_top`, which holds every weight of the head) and the classifier made of
both, which maps a transformed image to class scores and is what gets exported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from trainer import backbones, features
from trainer import strategy as strategies
from trainer.config import TrainingConfig

_POOL_LAYER = "pool"
_HEAD_TOP = "head_top"


class GraphModel(tf.keras.Model):
    """A functional Keras model whose calls and steps are traced without AutoGraph.

    Keras layers, losses, metrics and optimizers need no AutoGraph (they branch
    with `smart_cond` and `tf.cond`), and converting every layer call of a large
    backbone and Keras' own step code dominates the time it takes to trace
    `fit`, `predict` and the export signatures. Layers called inside run
    unconverted too.
    """

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=training, mask=mask)

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        return super().train_step(data)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        return super().test_step(data)

    @tf.autograph.experimental.do_not_convert
    def predict_step(self, data):
        return super().predict_step(data)


@dataclasses.dataclass(frozen=True)
class ClassifierParts:
    """The backbone, the head, and the classifier made of both."""

    base: tf.keras.Model
    head: tf.keras.Model
    classifier: tf.keras.Model

    @property
    def pool(self) -> tf.keras.layers.Layer:
        """The head's parameter-free first layer: feature map -> vector."""
        return self.head.get_layer(_POOL_LAYER)

    @property
    def head_top(self) -> tf.keras.Model:
        """The head's trainable part: vector -> class scores."""
        return self.head.get_layer(_HEAD_TOP)


def build_parts(config: TrainingConfig, num_classes: int) -> ClassifierParts:
    """The frozen backbone, a new head, and the classifier made of both."""
    base = backbones.build_frozen_base(
        config.backbone, config.input_size, config.weights, config.cut_layer
    )
    head = build_head(base.output_shape[1:], num_classes, config)
    return ClassifierParts(base, head, build_classifier(base, head, config.input_size))


def build_head(
    feature_shape: tuple[int, ...], num_classes: int, config: TrainingConfig
) -> tf.keras.Model:
    """The new head: pooling, then hidden Dense layers with dropout, then the scores.

    The head is two parts: a parameter-free `pool` layer (global average or
    max pooling, flatten, or nothing for a backbone that returns vectors), and
    `head_top`, which holds every weight. The scores are a softmax over the
    classes, or, for `head.binary`, one sigmoid unit p given out as [1 - p, p].
    """
    feature_map = tf.keras.Input(shape=feature_shape, name="backbone_features")
    vector = _pooling_layer(len(feature_shape), config.head.pooling)(feature_map)
    top = build_head_top(vector.shape[1:], num_classes, config)
    return GraphModel(feature_map, top(vector), name="head")


def _pooling_layer(feature_rank: int, pooling: str) -> tf.keras.layers.Layer:
    if feature_rank == 1:
        return tf.keras.layers.Identity(name=_POOL_LAYER)
    if feature_rank == 3 and pooling == "avg":
        return tf.keras.layers.GlobalAveragePooling2D(name=_POOL_LAYER)
    if feature_rank == 3 and pooling == "max":
        return tf.keras.layers.GlobalMaxPooling2D(name=_POOL_LAYER)
    return tf.keras.layers.Flatten(name=_POOL_LAYER)


def build_head_top(
    vector_shape: tuple[int, ...], num_classes: int, config: TrainingConfig
) -> tf.keras.Model:
    """The head's trainable part alone: pooled vector -> class scores (`head_top`)."""
    head = config.head
    vector = tf.keras.Input(shape=vector_shape, name="features")
    x = vector
    for index, units in enumerate(head.dense_units):
        x = tf.keras.layers.Dense(units, activation=head.activation, name=f"dense_{index}")(x)
        x = tf.keras.layers.Dropout(head.dropout, seed=config.seed + index,
                                    name=f"dropout_{index}")(x)
    if not head.dense_units:
        x = tf.keras.layers.Dropout(head.dropout, seed=config.seed, name="dropout")(x)
    if head.binary:
        probability = tf.keras.layers.Dense(
            1, activation="sigmoid", dtype="float32", name="probability")(x)
        scores = BinaryScores(name="scores")(probability)
    else:
        scores = tf.keras.layers.Dense(
            num_classes, activation="softmax", dtype="float32", name="scores")(x)
    return GraphModel(vector, scores, name=_HEAD_TOP)


class BinaryScores(tf.keras.layers.Layer):
    """One sigmoid probability p (of label id 1) -> the two class scores [1 - p, p]."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, probability: tf.Tensor) -> tf.Tensor:
        return tf.concat([1.0 - probability, probability], axis=-1)


def build_classifier(base: tf.keras.Model, head: tf.keras.Model, image_size: int) -> tf.keras.Model:
    """Transformed image -> class scores: the backbone (inference mode) and the head."""
    image = tf.keras.Input(shape=(image_size, image_size, 3), name=features.TRANSFORMED_IMAGE_KEY)
    return GraphModel(image, head(base(image, training=False)), name="classifier")


def float32_copy(parts: ClassifierParts, config: TrainingConfig, num_classes: int
                 ) -> tf.keras.Model:
    """The trained classifier rebuilt in float32 on no device in particular, for export."""
    with strategies.precision_policy(False):
        has_layers = backbones.get_backbone(config.backbone).has_layers
        weights = backbones.WEIGHTS_NONE if has_layers else config.weights
        copy = build_parts(dataclasses.replace(config, weights=weights), num_classes)
    # Frozen throughout, both list their weights in the same (layer) order.
    parts.classifier.trainable = False
    copy.classifier.trainable = False
    copy.classifier.set_weights(parts.classifier.get_weights())
    return copy.classifier


def check_classes(config: TrainingConfig, class_names: list[str]) -> None:
    """Raises ValueError when the label vocabulary does not suit the head."""
    if len(class_names) < 2:
        raise ValueError(f"training needs at least two classes, the labels are {class_names}")
    if config.head.binary and len(class_names) != 2:
        raise ValueError(
            f"head.binary needs exactly two classes, the labels are {class_names}; "
            "set head.binary: false for a softmax over all of them"
        )
