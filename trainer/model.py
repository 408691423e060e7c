"""The Trainer module: a pretrained backbone, a new head, optionally fine-tuned.

Training has up to two phases, each with early stopping on the validation loss
and ending with its best epoch's weights:

1. head: the backbone is frozen; only the new head trains.
2. fine_tuning (optional): from the best head, the top layers of the backbone
   train too, at a lower learning rate; kept only if it beats phase 1.

Fast path (the default when it applies): whatever does not train cannot change
its output, so when there is no augmentation the frozen backbone (in phase 2,
its frozen bottom) runs once over the train and eval data and the trainable
part trains on that cached output, instead of running the whole network on
every batch of every epoch. The model is the same; it trains many times faster.
Otherwise (augmentation, `cache_features: false`, or a cache that would not fit
in memory) each batch goes through the whole network.

The exported model is Transform + backbone + head (see `trainer.export`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from tfx import v1 as tfx

from trainer import augmentation, backbones, export, features, fine_tuning, training, warm_start
from trainer import feature_engine as feature_engines
from trainer import strategy as strategies
from trainer.config import (
    CLASS_WEIGHTS_AUTO,
    CLASS_WEIGHTS_NONE,
    FEATURE_ENGINE_TENSORFLOW,
    FEATURE_ENGINE_TFLITE,
    TrainingConfig,
)
from trainer.data import TrainingData

HISTORY_FILE = "history.json"
FEATURE_BATCH_SIZE = 64
HEAD_PHASE = "head"
FINE_TUNING_PHASE = "fine_tuning"
_SPLITS = (features.TRAIN_SPLIT, features.EVAL_SPLIT)
PATH_CACHED = "cached_features"
PATH_END_TO_END = "end_to_end"
_POOL_LAYER = "pool"
_HEAD_TOP = "head_top"
_CACHE_MEMORY_SHARE = 0.5  # of the memory available when training starts


class GraphModel(tf.keras.Model):
    """A functional Keras model whose calls and steps are traced without AutoGraph.

    Keras layers, losses, metrics and optimizers need no AutoGraph (they branch
    with `smart_cond` and `tf.cond`), and converting every layer call of a large
    backbone and Keras' own step code dominated the time to trace `fit`,
    `predict` and the export signatures (exporting EfficientNet-Lite0: 11 s ->
    4 s; the first `fit` of a head: 5 s -> 1 s). Layers called inside run
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


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Trains the classifier and exports it; TFX Trainer's entry point."""
    train_and_export(fn_args)


def train_and_export(
    fn_args: tfx.components.FnArgs, strategy: tf.distribute.Strategy | None = None
) -> dict[str, Any]:
    """What `run_fn` does, on `strategy` (default: `trainer.strategy.make_strategy()`).

    Returns:
        The training history written to `<model_run_dir>/history.json`.
    """
    config = TrainingConfig.from_dict(fn_args.custom_config)
    tf.keras.utils.set_random_seed(config.seed)
    data = TrainingData.from_fn_args(fn_args)
    counts = {split: data.label_counts(split) for split in _SPLITS}
    check_classes(config, data.class_names)
    class_weight = class_weights(config, data.class_names, counts[features.TRAIN_SPLIT])
    strategy = strategy or strategies.make_strategy()
    fn_args = strategies.for_this_worker(fn_args, strategy)
    mixed = strategies.use_mixed_precision(config.mixed_precision)
    with strategies.precision_policy(mixed), strategy.scope():
        parts = build_parts(config, len(data.class_names))
        run = _PhaseRunner(parts, data, config, class_weight, fn_args.model_run_dir, counts)
        run.history[warm_start.HISTORY_KEY] = warm_start.restore(
            fn_args.base_model, parts, config, data.class_names)
        run.head_phase()
        if config.fine_tuning.enabled:
            run.fine_tuning_phase()
    classifier = parts.classifier
    if mixed or strategy.num_replicas_in_sync > 1:
        classifier = float32_copy(parts, config, len(data.class_names))
    export.export_serving_model(
        classifier, data.tf_transform_output, fn_args.serving_model_dir, config.export,
        training_record={"config": config.to_dict(), "history": run.history},
    )
    warm_start.save(fn_args.serving_model_dir, parts, config, data.class_names, run.history)
    _write_history(run.history, fn_args.model_run_dir)
    return run.history


# ------------------------------------------------------------------------- model


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
    top = _build_head_top(vector.shape[1:], num_classes, config)
    return GraphModel(feature_map, top(vector), name="head")


def _pooling_layer(feature_rank: int, pooling: str) -> tf.keras.layers.Layer:
    if feature_rank == 1:
        return tf.keras.layers.Identity(name=_POOL_LAYER)
    if feature_rank == 3 and pooling == "avg":
        return tf.keras.layers.GlobalAveragePooling2D(name=_POOL_LAYER)
    if feature_rank == 3 and pooling == "max":
        return tf.keras.layers.GlobalMaxPooling2D(name=_POOL_LAYER)
    return tf.keras.layers.Flatten(name=_POOL_LAYER)


def _build_head_top(
    vector_shape: tuple[int, ...], num_classes: int, config: TrainingConfig
) -> tf.keras.Model:
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


# ----------------------------------------------------------------------- classes


def check_classes(config: TrainingConfig, class_names: list[str]) -> None:
    """Raises ValueError when the label vocabulary does not suit the head."""
    if len(class_names) < 2:
        raise ValueError(f"training needs at least two classes, the labels are {class_names}")
    if config.head.binary and len(class_names) != 2:
        raise ValueError(
            f"head.binary needs exactly two classes, the labels are {class_names}; "
            "set head.binary: false for a softmax over all of them"
        )


def class_weights(
    config: TrainingConfig, class_names: list[str], counts: np.ndarray
) -> dict[int, float] | None:
    """Loss weight per class id from `config.class_weights`; None for unweighted.

    Raises:
        ValueError: A mapping names a class that is not in the labels.
    """
    setting = config.class_weights
    if setting == CLASS_WEIGHTS_NONE:
        return None
    if setting == CLASS_WEIGHTS_AUTO:
        total, present = int(counts.sum()), int((counts > 0).sum())
        return {index: total / (present * int(n)) if n else 1.0
                for index, n in enumerate(counts)}
    unknown = sorted(set(setting) - set(class_names))
    if unknown:
        raise ValueError(f"class_weights names {unknown}, which are not classes; "
                         f"the classes are {class_names}")
    return {index: float(setting.get(name, 1.0)) for index, name in enumerate(class_names)}


# ------------------------------------------------------------------------ phases


@dataclasses.dataclass
class _Cache:
    """A trainable part's inputs, computed once: per split, (inputs, labels)."""

    train: tuple[list[np.ndarray], np.ndarray]
    eval: tuple[list[np.ndarray], np.ndarray]


class _PhaseRunner:
    """Runs the head and fine-tuning phases on one set of classifier parts."""

    def __init__(
        self,
        parts: ClassifierParts,
        data: TrainingData,
        config: TrainingConfig,
        class_weight: dict[int, float] | None,
        model_run_dir: str,
        counts: dict[str, np.ndarray],
    ) -> None:
        self.parts, self.data, self.config = parts, data, config
        self.class_weight = class_weight
        self.model_run_dir = model_run_dir
        self.examples = sum(int(c.sum()) for c in counts.values())
        self.train_examples = int(counts[features.TRAIN_SPLIT].sum())
        self.history: dict[str, Any] = {"path": {}, "best": None}
        self._boundary_cache: _Cache | None = None
        self._split = None
        self._best_val_loss = math.inf

    # The two phases.

    def head_phase(self) -> None:
        """Trains the head on the frozen backbone."""
        parts, config = self.parts, self.config
        if self._cache_applies(parts.head_top.input_shape[1:], parts.base.output.dtype):
            cache = self._head_inputs_cache()
            model, train, validation, path = parts.head_top, cache.train, cache.eval, PATH_CACHED
        else:
            model, path = parts.classifier, PATH_END_TO_END
            train, validation = self._image_batches()
        self._compile(model, path, config.learning_rate)
        self._fit(HEAD_PHASE, path, model, train, validation, config.epochs)

    def fine_tuning_phase(self) -> None:
        """From the best head, trains the top of the backbone too, at a lower rate."""
        parts, tuning = self.parts, self.config.fine_tuning
        split = self._split or fine_tuning.split_at_frozen_boundary(
            parts.base, tuning.unfreeze_layers)
        unfrozen = fine_tuning.unfreeze_top_layers(parts.base, tuning.unfreeze_layers)
        self.history["unfrozen_layers"] = unfrozen
        logging.info("Fine-tuning %d layers of %s: %s", len(unfrozen), self.config.backbone,
                     ", ".join(unfrozen))
        cache = self._boundary_cache
        if cache is None and split is not None and self._cache_applies(
                _shapes(split[0]), split[0].outputs[0].dtype):
            cache = self._extract_cache(split[0])
        if cache is not None:
            model, path = self._on_boundary(split[1], self.parts.head), PATH_CACHED
            train, validation = cache.train, cache.eval
        else:
            model, path = parts.classifier, PATH_END_TO_END
            train, validation = self._image_batches()
        self._compile(model, path, tuning.learning_rate)
        self._fit(FINE_TUNING_PHASE, path, model, train, validation, tuning.epochs,
                  initial_best=self._best_val_loss)

    # Inputs.

    def _head_inputs_cache(self) -> _Cache:
        """Pooled backbone features of every example, computed once.

        With fine-tuning ahead on cached inputs, the backbone's frozen bottom runs
        over the images (its output is kept for phase 2) and the pooled features
        come from its top; otherwise the whole backbone runs over the images.
        """
        parts, tuning = self.parts, self.config.fine_tuning
        if tuning.enabled:
            self._split = fine_tuning.split_at_frozen_boundary(parts.base, tuning.unfreeze_layers)
            if self._split is not None and self._cache_applies(
                    _shapes(self._split[0]), self._split[0].outputs[0].dtype):
                self._boundary_cache = self._extract_cache(self._split[0])
                pooled_from_boundary = self._on_boundary(self._split[1], parts.pool)
                return _Cache(
                    train=self._predict(pooled_from_boundary, self._boundary_cache.train),
                    eval=self._predict(pooled_from_boundary, self._boundary_cache.eval),
                )
        image = tf.keras.Input(shape=parts.base.input_shape[1:], name="images")
        pooled = GraphModel(image, parts.pool(parts.base(image, training=False)))
        return self._extract_cache(pooled)

    def _extract_cache(self, feature_model: tf.keras.Model) -> _Cache:
        """Runs `feature_model` once over every train and eval image.

        On the engine `config.feature_engine` chooses (see `trainer.feature_engine`).
        """
        engine = feature_engines.tflite_or_none(
            feature_model, self.config.feature_engine, self._check_images)
        self.history["feature_engine"] = (
            FEATURE_ENGINE_TENSORFLOW if engine is None else FEATURE_ENGINE_TFLITE)
        if engine is not None:
            return _Cache(*(self._run_engine(engine, split) for split in _SPLITS))
        images = tf.keras.Input(shape=feature_model.input_shape[1:], name="images")
        labels = tf.keras.Input(shape=(), dtype=tf.int64, name="labels")
        outputs = tf.nest.flatten(feature_model(images, training=False))
        extractor = GraphModel(
            [images, labels], [*outputs, tf.keras.layers.Identity(name="label_ids")(labels)]
        )

        def run(split: str) -> tuple[list[np.ndarray], np.ndarray]:
            batches = self.data.images_and_labels(split, FEATURE_BATCH_SIZE).map(
                lambda image_batch, label_batch: ((image_batch, label_batch),)
            ).prefetch(tf.data.AUTOTUNE)
            *arrays, label_ids = extractor.predict(batches, verbose=0)
            return arrays, label_ids

        return _Cache(train=run(features.TRAIN_SPLIT), eval=run(features.EVAL_SPLIT))

    def _check_images(self) -> np.ndarray:
        """A few transformed training images, to check a feature engine on."""
        batch = self.data.images_and_labels(features.TRAIN_SPLIT, feature_engines.CHECK_IMAGES)
        batch = batch.take(1)
        return next(iter(batch))[0].numpy()

    def _run_engine(
        self, engine: feature_engines.TFLiteModel, split: str
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """`engine`'s outputs for every image of `split`, and the label ids."""
        outputs, labels = [], []
        batches = self.data.images_and_labels(split, FEATURE_BATCH_SIZE)
        for images, label_ids in batches.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
            if len(label_ids):
                outputs.append(engine(images))
                labels.append(label_ids)
        arrays = [np.concatenate(output) for output in zip(*outputs, strict=True)]
        return arrays, np.concatenate(labels)

    def _predict(
        self, model: tf.keras.Model, cached: tuple[list[np.ndarray], np.ndarray]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        inputs, labels = cached
        outputs = model.predict(inputs, batch_size=FEATURE_BATCH_SIZE, verbose=0)
        return [outputs], labels

    def _on_boundary(self, top: tf.keras.Model, then: tf.keras.layers.Layer) -> tf.keras.Model:
        """A model from the frozen bottom's outputs through `top`, then `then`."""
        inputs = [tf.keras.Input(shape=t.shape[1:], dtype=t.dtype) for t in top.inputs]
        return GraphModel(inputs, then(top(inputs, training=False)))

    def _image_batches(self) -> tuple[tf.data.Dataset, tf.data.Dataset]:
        """Training batches (shuffled, augmented) and validation batches of images."""
        config = self.config
        train = self.data.images_and_labels(
            features.TRAIN_SPLIT, config.batch_size, shuffle=True, seed=config.seed)
        train = augmentation.augment_batches(train, config.augmentation, config.seed)
        validation = self.data.images_and_labels(features.EVAL_SPLIT, config.batch_size)
        return train.prefetch(tf.data.AUTOTUNE), validation.prefetch(tf.data.AUTOTUNE)

    def _cache_applies(self, shapes: Any, dtype: tf.DType) -> bool:
        """Whether inputs of `shapes` can be cached for every example, in memory."""
        config = self.config
        if not config.cache_features or config.augmentation.enabled:
            return False
        per_example = sum(math.prod(shape) for shape in _as_shape_list(shapes))
        needed = self.examples * per_example * tf.as_dtype(dtype).size
        available = _available_memory_bytes()
        if needed > _CACHE_MEMORY_SHARE * available:
            logging.warning(
                "Not caching backbone outputs: %.1f GB for %d examples is more than half the "
                "%.1f GB of memory available; running the backbone on every batch instead",
                needed / 1e9, self.examples, available / 1e9,
            )
            return False
        return True

    # Fitting.

    def _compile(self, model: tf.keras.Model, path: str, learning_rate: float) -> None:
        training.compile_for_training(
            model, self.config.optimizer, learning_rate,
            steps_per_execution=training.array_steps_per_execution(
                self.train_examples, self.config.batch_size) if path == PATH_CACHED else 1,
        )

    def _fit(self, phase: str, path: str, model: tf.keras.Model, train: Any, validation: Any,
             epochs: int, initial_best: float = math.inf) -> None:
        logging.info("Training phase %s on %s", phase, path)
        if isinstance(train, tuple):  # cached arrays: one input array, or a list of several
            train, validation = _unwrap_single(train), _unwrap_single(validation)
        history, best = training.fit_phase(
            model, train, validation,
            epochs=epochs,
            patience=self.config.early_stopping_patience,
            log_dir=training.log_dir_for(self.model_run_dir, phase),
            batch_size=self.config.batch_size,
            class_weight=self.class_weight,
            initial_best=initial_best,
        )
        self.history[phase] = history
        self.history["path"][phase] = path
        if best.best_epoch is not None:
            self._best_val_loss = best.best
            self.history["best"] = {
                "phase": phase, "epoch": best.best_epoch + 1,
                **{name: values[best.best_epoch] for name, values in history.items()},
            }


def _unwrap_single(cached: tuple[list[np.ndarray], np.ndarray]) -> tuple[Any, np.ndarray]:
    inputs, labels = cached
    return (inputs[0] if len(inputs) == 1 else inputs), labels


def _shapes(model: tf.keras.Model) -> list[tuple[int, ...]]:
    return [tuple(t.shape[1:]) for t in model.outputs]


def _as_shape_list(shapes: Any) -> list[tuple[int, ...]]:
    if shapes and isinstance(shapes[0], (tuple, list)):
        return [tuple(shape) for shape in shapes]
    return [tuple(shapes)]


def _available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo, else free physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _write_history(history: dict[str, Any], log_dir: str) -> None:
    tf.io.gfile.makedirs(log_dir)
    with tf.io.gfile.GFile(os.path.join(log_dir, HISTORY_FILE), "w") as f:
        json.dump(history, f, indent=2)
