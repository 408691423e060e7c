"""Unfreezing the top of a backbone, and splitting it where the frozen part ends.

Fine-tuning follows the Keras transfer-learning guide: the top layers train,
BatchNormalization layers stay frozen (and the backbone is always called with
``training=False``, so they keep their ImageNet statistics), and the learning
rate is much lower than the head's.

Because the layers below the unfrozen ones never change, `split_at_frozen_boundary`
cuts the backbone there: the frozen bottom can run once over the data and the
top trains on its cached output, like the head does in the first phase.
"""

from __future__ import annotations

import tensorflow as tf

from trainer.config import UNFREEZE_ALL


def _layers(base: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    return [layer for layer in base.layers if not isinstance(layer, tf.keras.layers.InputLayer)]


def top_layers(base: tf.keras.Model, count: int | str) -> list[tf.keras.layers.Layer]:
    """The top `count` layers of `base` (all of them for "all" or a count beyond them)."""
    layers = _layers(base)
    if count == UNFREEZE_ALL or count >= len(layers):
        return layers
    return layers[len(layers) - count:]


def unfreeze_top_layers(base: tf.keras.Model, count: int | str) -> list[str]:
    """Makes the top `count` layers of `base` trainable, BatchNormalization excepted.

    Returns:
        Names of the layers that now train.
    """
    chosen = top_layers(base, count)
    base.trainable = True
    for layer in _layers(base):
        layer.trainable = False
    unfrozen = []
    for layer in chosen:
        layer.trainable = True
        _freeze_batch_norm(layer)
        if layer.trainable and layer.trainable_weights:
            unfrozen.append(layer.name)
    return unfrozen


def _freeze_batch_norm(layer: tf.keras.layers.Layer) -> None:
    if isinstance(layer, tf.keras.layers.BatchNormalization):
        layer.trainable = False
        return
    for sublayer in getattr(layer, "layers", ()):
        _freeze_batch_norm(sublayer)


def split_at_frozen_boundary(
    base: tf.keras.Model, count: int | str
) -> tuple[tf.keras.Model, tf.keras.Model] | None:
    """Cuts `base` below its top `count` layers.

    Returns:
        (bottom, top): `bottom` maps the base's input to the tensors the top
        layers read from below (one or several, e.g. a residual branch), and
        `top` maps those tensors to the base's output, sharing the base's layers.
        ``top(bottom(x))`` equals ``base(x)``. None when nothing lies below the
        top layers (the whole base trains) or `base` is not a functional graph.
    """
    if not isinstance(base, tf.keras.Model) or not getattr(base, "_is_graph_network", False):
        return None
    chosen = top_layers(base, count)
    chosen_ids = {id(layer) for layer in chosen}
    produced_below = {}
    for layer in base.layers:
        if id(layer) not in chosen_ids:
            for tensor in tf.nest.flatten(layer.output):
                produced_below[id(tensor)] = tensor
    boundary = []
    for layer in chosen:
        for tensor in tf.nest.flatten(layer.input):
            if id(tensor) in produced_below and all(tensor is not t for t in boundary):
                boundary.append(tensor)
    if not boundary or any(tensor is t for tensor in boundary for t in base.inputs):
        return None
    bottom = tf.keras.Model(base.inputs, boundary, name=f"{base.name}_frozen_bottom")
    top = tf.keras.Model(boundary, base.outputs, name=f"{base.name}_trained_top")
    return bottom, top
