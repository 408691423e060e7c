"""Typed training settings, shared by the pipeline (which validates them) and
the Transform and Trainer modules (which receive them as `custom_config`).

In a config file they are the ``training`` section (see `trainer.config_file`
and the recipes in ``recipes/``):

    training:
      backbone: vgg16
      head: {pooling: flatten, dense_units: [256], dropout: 0.5}
      augmentation: {horizontal_flip: true, rotation: 0.2}
      fine_tuning: {unfreeze_layers: 4, learning_rate: 1e-5, epochs: 5}
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Mapping
from typing import Any

from trainer import backbones
from trainer.config_file import ConfigError, build_config, convert_value, to_plain

OPTIMIZERS = ("adam", "rmsprop", "sgd")
POOLINGS = ("avg", "max", "flatten")
CLASS_WEIGHTS_NONE = "none"
CLASS_WEIGHTS_AUTO = "auto"
MIXED_PRECISION_MODES = ("auto", "on", "off")
FEATURE_ENGINE_AUTO = "auto"
FEATURE_ENGINE_TENSORFLOW = "tensorflow"
FEATURE_ENGINE_TFLITE = "tflite"
FEATURE_ENGINES = (FEATURE_ENGINE_AUTO, FEATURE_ENGINE_TENSORFLOW, FEATURE_ENGINE_TFLITE)
UNFREEZE_ALL = "all"
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
"""Largest width x height a served image may declare (a 48 MP photo is 48e6)."""
MAX_IMAGE_PIXELS_LIMIT = 2**29 - 1
"""The largest pixel budget that means anything: TensorFlow's image decoders refuse an
image of 2**29 pixels or more (DecodePng: "PNG size too large for int"), so a larger
budget admits no more images; it also keeps the exported graph's int64 comparison exact."""
MAX_IMAGE_SIZE = 1024
"""Largest model input side. No backbone here was pretrained above 300 pixels, images
are downscaled at ingestion to a longer side of `IngestConfig.max_side` (1024 by
default), and one float32 RGB input of side N takes 12 * N**2 bytes in Transform's
output and in every training batch, so larger inputs only upsample and run out of memory."""
DEFAULT_TFLITE_TOLERANCE = 1e-3
"""Largest accepted difference between TFLite and SavedModel class scores."""


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The new classification head on top of the backbone.

    Attributes:
        pooling: How the backbone's feature map becomes a vector: "avg" or "max"
            (global pooling) or "flatten". Ignored when the backbone already
            returns a vector (a TF-Hub feature vector, a cut at VGG's ``fc2``).
        dense_units: Hidden Dense layers, in order (e.g. [1024]); none by default.
        activation: Activation of the hidden Dense layers (a Keras name).
        dropout: Dropout rate after each hidden layer, or after pooling when
            there is none.
        binary: One sigmoid unit instead of a softmax; needs exactly two classes.
            The model still outputs two scores, [1 - p, p], in label-vocabulary
            order, so evaluation and serving read it like any other.
    """

    SECTION_LABEL = "head"

    pooling: str = "avg"
    dense_units: tuple[int, ...] = ()
    activation: str = "relu"
    dropout: float = 0.2
    binary: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.dense_units, list):
            object.__setattr__(self, "dense_units", tuple(self.dense_units))

    def validate(self) -> HeadConfig:
        """Raises ValueError naming an impossible head setting; returns self."""
        _require(self.pooling in POOLINGS,
                 f"head.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        _require(all(units >= 1 for units in self.dense_units),
                 f"head.dense_units must all be >= 1, got {list(self.dense_units)}")
        _require(0 <= self.dropout < 1, f"head.dropout must be in [0, 1), got {self.dropout}")
        _check_activation(self.activation)
        return self


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """Random changes to training images, applied in the training input only.

    Geometric changes only (they do not depend on the backbone's pixel range);
    gaps are filled by reflection. All zero/false (the default) means none.

    Attributes:
        horizontal_flip: Mirror left-right at random.
        vertical_flip: Mirror top-bottom at random.
        rotation: Largest rotation, as a fraction of a full turn (0.2 = +-72°),
            as in `tf.keras.layers.RandomRotation`.
        zoom: Largest zoom in or out, as a fraction of the side.
        height_shift: Largest vertical shift, as a fraction of the height.
        width_shift: Largest horizontal shift, as a fraction of the width.
    """

    SECTION_LABEL = "augmentation"

    horizontal_flip: bool = False
    vertical_flip: bool = False
    rotation: float = 0.0
    zoom: float = 0.0
    height_shift: float = 0.0
    width_shift: float = 0.0

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return any(dataclasses.astuple(self))

    def validate(self) -> AugmentationConfig:
        """Raises ValueError naming an impossible augmentation setting; returns self."""
        for name in ("rotation", "zoom", "height_shift", "width_shift"):
            value = getattr(self, name)
            _require(0 <= value < 1, f"augmentation.{name} must be in [0, 1), got {value}")
        return self


@dataclasses.dataclass(frozen=True)
class FineTuningConfig:
    """An optional second phase that also trains the top of the backbone.

    It starts from the best head of the first phase, unfreezes the top
    `unfreeze_layers` layers of the backbone (BatchNormalization layers stay
    frozen and in inference mode) and trains them with the head at a lower
    learning rate. The result is kept only if it beats the first phase's best
    validation loss.

    Attributes:
        unfreeze_layers: 0 (no fine-tuning), a number of layers counted from the
            top of the backbone, or "all". A TF-Hub module is one layer: any
            number unfreezes it whole.
        learning_rate: Learning rate of this phase; lower than the head's.
        epochs: Upper bound on this phase's epochs; early stopping may end sooner.
    """

    SECTION_LABEL = "fine_tuning"

    unfreeze_layers: int | str = 0
    learning_rate: float = 1e-5
    epochs: int = 10

    @property
    def enabled(self) -> bool:
        """Whether there is a fine-tuning phase."""
        return self.unfreeze_layers != 0

    def validate(self) -> FineTuningConfig:
        """Raises ValueError naming an impossible fine-tuning setting; returns self."""
        layers = self.unfreeze_layers
        _require(layers == UNFREEZE_ALL or (isinstance(layers, int) and layers >= 0),
                 f"fine_tuning.unfreeze_layers must be a number >= 0 or {UNFREEZE_ALL!r}, "
                 f"got {layers!r}")
        _require(0 < self.learning_rate < 1,
                 f"fine_tuning.learning_rate must be in (0, 1), got {self.learning_rate}")
        _require(self.epochs >= 1, f"fine_tuning.epochs must be at least 1, got {self.epochs}")
        return self


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """How the trained model is exported for serving (see `trainer.export`).

    Attributes:
        max_image_pixels: Pixel budget of one served image: an image whose
            header declares more width x height pixels is refused, with an
            error naming it, before any pixel is decoded.
        tflite: Also write a TFLite model of the classifier beside the
            SavedModel (``assets.extra/classifier.tflite``); the Trainer fails
            if its scores disagree with the SavedModel's on test images.
        tflite_tolerance: Largest accepted absolute difference between TFLite
            and SavedModel class scores.
    """

    SECTION_LABEL = "export"

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    tflite: bool = False
    tflite_tolerance: float = DEFAULT_TFLITE_TOLERANCE

    def validate(self) -> ExportConfig:
        """Raises ValueError naming an impossible export setting; returns self."""
        _check_types(self)
        _require(self.max_image_pixels >= 1,
                 f"export.max_image_pixels must be at least 1, got {self.max_image_pixels}")
        _require(self.max_image_pixels <= MAX_IMAGE_PIXELS_LIMIT,
                 f"export.max_image_pixels must be at most {MAX_IMAGE_PIXELS_LIMIT} "
                 f"(TensorFlow cannot decode an image of 2**29 pixels or more), "
                 f"got {self.max_image_pixels}")
        _require(0 < self.tflite_tolerance < 1,
                 f"export.tflite_tolerance must be in (0, 1) (scores are in [0, 1]), "
                 f"got {self.tflite_tolerance}")
        return self


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """An optional search over the head's settings before the Trainer runs.

    TFX's Tuner node searches with KerasTuner (Bayesian optimization of the
    validation accuracy) over the head's dropout, hidden units, learning rate,
    optimizer and weight decay (`trainer.tuning.SEARCH_SPACE`), training each
    trial's head on the Embedder's vectors, so no trial runs the backbone. The
    Trainer then trains with the best settings found; they replace the
    configured ones and are recorded in the history, the report and the model card.

    Attributes:
        enabled: Search before training (`--tune`); off by default.
        max_trials: Most head settings tried.
        max_seconds: No trial starts after this many seconds of search.
    """

    SECTION_LABEL = "tuning"

    enabled: bool = False
    max_trials: int = 20
    max_seconds: float = 600.0

    def validate(self) -> TuningConfig:
        """Raises ValueError naming an impossible tuning setting; returns self."""
        _check_types(self)
        _require(self.max_trials >= 1,
                 f"tuning.max_trials must be at least 1, got {self.max_trials}")
        _require(self.max_seconds > 0,
                 f"tuning.max_seconds must be more than 0, got {self.max_seconds}")
        return self


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How the classifier is built and trained.

    Attributes:
        backbone: Registry name of the pretrained network (see `trainer.backbones`),
            or ``hub:<directory>`` for a local TF-Hub feature-vector SavedModel.
        weights: "imagenet", "package", "none", or the path of a local weights file.
        image_size: Side of the square model input; None takes the backbone's default.
        cut_layer: Name of the backbone layer to cut at (InceptionV3 "mixed7",
            VGG16 "fc2"); None keeps the whole network without its top.
        head: The new classification head.
        optimizer: "adam", "rmsprop" or "sgd" (momentum 0.9).
        learning_rate: Learning rate of the head phase.
        weight_decay: Decoupled weight decay of the optimizer (0: none), in
            both phases.
        epochs: Upper bound on head-phase epochs; early stopping may end sooner.
        early_stopping_patience: Epochs without a better validation loss before
            a phase stops; the best epoch's weights are restored either way.
        batch_size: Examples per training step (across all devices).
        class_weights: "none"; "auto" (balanced: each class weighs
            n_examples / (n_classes * n_examples_of_class), correcting imbalance);
            or a mapping of class name to weight (missing classes weigh 1).
        augmentation: Random changes to training images.
        fine_tuning: The optional second phase.
        cache_features: Run a frozen backbone once over the data and train on
            its cached output when nothing in it trains and there is no
            augmentation (the same model, much faster). False always runs the
            backbone on every batch.
        feature_engine: What computes the cached outputs: "auto" (on a
            CPU-only host the faster of TensorFlow and TFLite's XNNPACK
            kernels, timed on the first batches; TensorFlow on GPUs, across
            replicas or with mixed precision),
            "tensorflow" or "tflite" (see `trainer.feature_engine`). The model
            trains and is exported in TensorFlow either way.
        mixed_precision: "auto" (float16 compute on GPUs, float32 otherwise),
            "on" or "off". The exported model always computes in float32.
        seed: Seed for initialisation, shuffling, dropout and augmentation.
        export: How the model is exported: pixel budget, optional TFLite.
        warm_start: Start from the head (and fine-tuned backbone) of the
            version being served when this data arrived, when it has the same
            backbone, cut, image size, head shape and classes (see
            `trainer.warm_start`); false always trains from scratch.
        tuning: The optional search over the head's settings (`--tune`).
    """

    SECTION_LABEL = "training"

    backbone: str = backbones.DEFAULT_BACKBONE
    weights: str = backbones.WEIGHTS_IMAGENET
    image_size: int | None = None
    cut_layer: str | None = None
    head: HeadConfig = HeadConfig()
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 10
    early_stopping_patience: int = 3
    batch_size: int = 32
    class_weights: str | dict[str, float] = CLASS_WEIGHTS_NONE
    augmentation: AugmentationConfig = AugmentationConfig()
    fine_tuning: FineTuningConfig = FineTuningConfig()
    cache_features: bool = True
    feature_engine: str = FEATURE_ENGINE_AUTO
    mixed_precision: str = "auto"
    seed: int = 0
    export: ExportConfig = ExportConfig()
    warm_start: bool = True
    tuning: TuningConfig = TuningConfig()

    def __post_init__(self) -> None:
        # Nested sections may come as mappings (from YAML or JSON custom_config).
        for name in _FIELD_TYPES:
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, convert_value(
                    _FIELD_TYPES[name], value, name))

    @property
    def input_size(self) -> int:
        """The model's input side: `image_size`, or the backbone's default."""
        if self.image_size is not None:
            return self.image_size
        return backbones.get_backbone(self.backbone).default_image_size

    def validate(self) -> TrainingConfig:
        """Checks every setting; returns self so calls can chain.

        Raises:
            ValueError: A setting is impossible; the message names it and the fix.
        """
        _check_types(self)
        backbone = backbones.get_backbone(self.backbone)
        resolved = backbones.resolve_weights(self.weights, self.backbone)
        if resolved not in (None, backbones.WEIGHTS_IMAGENET):
            _check_weights_file(resolved)
        _require(self.image_size is None or self.image_size >= backbone.min_image_size,
                 f"image_size must be at least {backbone.min_image_size} pixels for "
                 f"{self.backbone}, got {self.image_size}")
        _require(self.image_size is None or self.image_size <= MAX_IMAGE_SIZE,
                 f"image_size must be at most {MAX_IMAGE_SIZE} pixels (larger inputs only "
                 f"upsample the ingested images and exhaust memory), got {self.image_size}")
        if self.cut_layer is not None:
            backbones.check_cut_layer(self.backbone, self.cut_layer)
        self.head.validate()
        _require(self.optimizer in OPTIMIZERS,
                 f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _require(0 < self.learning_rate < 1,
                 f"learning_rate must be in (0, 1), got {self.learning_rate}")
        _require(0 <= self.weight_decay < 1,
                 f"weight_decay must be in [0, 1), got {self.weight_decay}")
        _require(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        _require(self.early_stopping_patience >= 0,
                 f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        _require(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        _check_class_weights(self.class_weights)
        self.augmentation.validate()
        self.fine_tuning.validate()
        _require(self.feature_engine in FEATURE_ENGINES,
                 f"feature_engine must be one of {FEATURE_ENGINES}, "
                 f"got {self.feature_engine!r}")
        _require(self.mixed_precision in MIXED_PRECISION_MODES,
                 f"mixed_precision must be one of {MIXED_PRECISION_MODES}, "
                 f"got {self.mixed_precision!r}")
        self.export.validate()
        self.tuning.validate()
        _require(not self.tuning.enabled or (self.cache_features
                                             and not self.augmentation.enabled),
                 "tuning searches heads on the cached backbone vectors: it needs "
                 "cache_features: true and no augmentation; turn one of them off")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe form passed to components as `custom_config`."""
        return to_plain(self)

    def preprocessing_dict(self) -> dict[str, Any]:
        """Only what Transform's preprocessing depends on, as its `custom_config`.

        With these alone, Transform's cached output stays valid when the head,
        the optimizer or any other training setting changes, and Transform never
        needs the weights file.
        """
        return {"backbone": self.backbone, "image_size": self.input_size}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainingConfig:
        """Inverse of `to_dict`, validated; unknown keys and wrong types are errors.

        Raises:
            ValueError: `values` holds a key that is not a setting, a value of
                the wrong type, or an impossible setting.
        """
        return build_config(cls, values).validate()



def recorded_input_size(settings: Mapping[str, Any]) -> int | None:
    """The model input's side from recorded settings (`TrainingConfig.to_dict()`).

    Only `backbone` and `image_size` decide it, so settings recorded by another
    version of Transferline still give it; None when those two are unusable.
    """
    try:
        known = {key: settings[key] for key in ("backbone", "image_size") if key in settings}
        return build_config(TrainingConfig, known).input_size
    except (ValueError, KeyError, TypeError):
        return None

_FIELD_TYPES = {
    "head": HeadConfig, "augmentation": AugmentationConfig, "fine_tuning": FineTuningConfig,
    "export": ExportConfig, "tuning": TuningConfig,
}


def _check_types(config: Any) -> None:
    """Every field's value fits its annotation (as `build_config` would check)."""
    build_config(type(config), {
        field.name: getattr(config, field.name) for field in dataclasses.fields(config)
    })


def _check_weights_file(path: str) -> None:
    """A weights file is a readable file; a ``.pth`` one's pickle passes the restricted unpickler.

    Only the pickle of a ``.pth`` is read (see `safe_pth.check_torch_checkpoint`), so a
    hostile checkpoint is refused here, before anything runs, with the unpickler's message.
    """
    import tensorflow as tf

    from trainer import safe_pth

    _require(not tf.io.gfile.isdir(path),
             f"weights={path!r} is a directory; expected a weights file (.h5, .pth)")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            f.read(1)
    except (OSError, tf.errors.OpError) as error:
        reason = getattr(error, "strerror", None) or getattr(error, "message", None) or error
        raise ConfigError(f"weights={path!r} cannot be read: {reason}") from None
    if path.endswith(".pth"):
        try:
            safe_pth.check_torch_checkpoint(path)
        except (ValueError, pickle.UnpicklingError) as error:
            raise ConfigError(f"weights: {error}") from None


def _check_class_weights(class_weights: str | dict[str, float]) -> None:
    if isinstance(class_weights, str):
        _require(class_weights in (CLASS_WEIGHTS_NONE, CLASS_WEIGHTS_AUTO),
                 f"class_weights must be {CLASS_WEIGHTS_NONE!r}, {CLASS_WEIGHTS_AUTO!r} or a "
                 f"mapping of class name to weight, got {class_weights!r}")
        return
    bad = {name: w for name, w in class_weights.items() if not (math.isfinite(w) and w > 0)}
    _require(not bad, f"class_weights must all be positive numbers, got {bad}")


def _check_activation(name: str) -> None:
    import tensorflow as tf

    try:
        tf.keras.activations.get(name)
    except ValueError:
        raise ValueError(
            f"head.activation {name!r} is not a Keras activation (e.g. relu, gelu, swish, tanh)"
        ) from None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
