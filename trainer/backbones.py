"""The backbone registry: one place that knows each pretrained network.

Each entry knows its default input size, its exact input preprocessing (the
function Transform applies, so training and serving share it) and how to build
the headless network with a given `weights` setting:

* ``"imagenet"``: the published ImageNet weights (downloaded by Keras, or taken
  from an installed weights package where the entry has one);
* ``"none"``: random initialisation;
* a path to a local weights file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import tensorflow as tf

from trainer import efficientnet_lite

WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A pretrained network with its top cut off.

    Attributes:
        name: Registry name, as users write it in configs and flags.
        default_image_size: Side of the square input the weights were trained at.
        preprocess: Maps float RGB pixels in [0, 255] to what the network expects.
        build: Builds the headless network: `build(input_shape, weights)`, where
            `weights` is already resolved by `resolve_weights` (None, "imagenet"
            or a file path).
    """

    name: str
    default_image_size: int
    preprocess: Callable[[tf.Tensor], tf.Tensor]
    build: Callable[[tuple[int, int, int], str | None], tf.keras.Model]


def _scale_to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1], as MobileNetV2 was trained."""
    return images / 127.5 - 1.0


def _build_mobilenet_v2(input_shape: tuple[int, int, int], weights: str | None) -> tf.keras.Model:
    keras_weights = weights if weights in (None, WEIGHTS_IMAGENET) else None
    model = tf.keras.applications.MobileNetV2(
        input_shape=input_shape, include_top=False, weights=keras_weights
    )
    if keras_weights is None and weights is not None:
        model.load_weights(weights)
    return model


def _build_efficientnet_lite0(
    input_shape: tuple[int, int, int], weights: str | None
) -> tf.keras.Model:
    return efficientnet_lite.build_efficientnet_lite(
        "lite0", input_shape=input_shape, include_top=False, weights=weights
    )


BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        Backbone(
            name="efficientnet_lite0",
            default_image_size=224,
            preprocess=efficientnet_lite.preprocess,
            build=_build_efficientnet_lite0,
        ),
        Backbone(
            name="mobilenet_v2",
            default_image_size=224,
            preprocess=_scale_to_unit_range,
            build=_build_mobilenet_v2,
        ),
    )
}

DEFAULT_BACKBONE = "efficientnet_lite0"


def get_backbone(name: str) -> Backbone:
    """Returns the registry entry `name`.

    Raises:
        ValueError: `name` is not registered; the message lists the valid names.
    """
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))}"
        ) from None


def resolve_weights(weights: str) -> str | None:
    """Turns a `weights` setting into what `Backbone.build` takes.

    Raises:
        ValueError: `weights` is neither a keyword nor an existing file.
    """
    if weights == WEIGHTS_NONE:
        return None
    if weights == WEIGHTS_IMAGENET:
        return WEIGHTS_IMAGENET
    if not tf.io.gfile.exists(weights):
        raise ValueError(
            f"weights={weights!r}: expected 'imagenet', 'none' or the path of a weights file, "
            "and no such file exists"
        )
    return os.fspath(weights)


def build_frozen_base(name: str, image_size: int, weights: str) -> tf.keras.Model:
    """Builds backbone `name` for square `image_size` inputs, frozen."""
    base = get_backbone(name).build((image_size, image_size, 3), resolve_weights(weights))
    base.trainable = False
    return base
