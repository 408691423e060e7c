"""The training phases: the head on the frozen backbone, then optionally fine-tuning.

Each phase trains with early stopping on the validation loss and ends with its
best epoch's weights (see `trainer.training`):

1. head: the backbone is frozen; only the new head trains.
2. fine_tuning (optional): from the best head, the top layers of the backbone
   train too, at a lower learning rate; kept only if it beats phase 1.

Fast path (the default when it applies): whatever does not train cannot change
its output, so when there is no augmentation the frozen backbone (in phase 2,
its frozen bottom) runs once over the train and eval data and the trainable
part trains on that cached output (`PATH_CACHED`), instead of running the whole
network on every batch of every epoch (`PATH_END_TO_END`). The model is the
same; it trains much faster. Otherwise (augmentation, `cache_features: false`,
or a cache that would not fit in memory) each batch goes through the whole
network.

When the Trainer is given the Embedder's output (`trainer.embeddings`), the
head phase's cache is read from it: no backbone runs for the head at all
(`history["head_inputs"]` is "embedder"). Fine-tuning and augmentation keep
their image paths; fine-tuning computes its own boundary cache from the images.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from trainer import augmentation, embeddings, features, fine_tuning, progress_events, training
from trainer import feature_engine as feature_engines
from trainer.classifier import ClassifierParts, GraphModel
from trainer.config import (
    CLASS_WEIGHTS_AUTO,
    CLASS_WEIGHTS_NONE,
    FEATURE_ENGINE_AUTO,
    FEATURE_ENGINE_TENSORFLOW,
    FEATURE_ENGINE_TFLITE,
    TrainingConfig,
)
from trainer.data import TrainingData

HEAD_PHASE = "head"
FINE_TUNING_PHASE = "fine_tuning"
PATH_CACHED = "cached_features"
"""A phase's path when its trainable part trains on cached inputs."""
PATH_END_TO_END = "end_to_end"
"""A phase's path when every batch runs through the whole classifier."""
HEAD_INPUTS_EMBEDDER = "embedder"
"""`history["head_inputs"]` when the head trained on the Embedder's vectors."""
HEAD_INPUTS_IMAGES = "images"
"""`history["head_inputs"]` when the head's inputs were computed from the images here."""
FEATURE_BATCH_SIZE = 64
"""Images per batch when the frozen part runs over the data to fill the cache."""
_SPLITS = (features.TRAIN_SPLIT, features.EVAL_SPLIT)
_CACHE_MEMORY_SHARE = 0.5  # of the memory available when training starts


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


@dataclasses.dataclass
class _Cache:
    """A trainable part's inputs, computed once: per split, (inputs, labels)."""

    train: tuple[list[np.ndarray], np.ndarray]
    eval: tuple[list[np.ndarray], np.ndarray]


class PhaseRunner:
    """Runs the head and fine-tuning phases on one set of classifier parts.

    `history` collects what the phases did: per phase its per-epoch metrics and
    its path (`PATH_CACHED` or `PATH_END_TO_END`), the best epoch over both
    phases, the unfrozen layers and the feature engine that filled the cache.

    Args:
        parts: The backbone, head and classifier to train, built in the
            strategy's scope.
        data: The train and eval examples.
        config: This run's settings.
        class_weight: Loss weight per class id (see `class_weights`), or None.
        model_run_dir: Where each phase writes its TensorBoard logs.
        counts: Examples per class id, per split.
    """

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
        self.split_examples = {split: int(c.sum()) for split, c in counts.items()}
        self.history: dict[str, Any] = {"path": {}, "best": None}
        self._boundary_cache: _Cache | None = None
        self._split = None
        self._best_val_loss = math.inf

    # The two phases.

    def head_phase(self) -> None:
        """Trains the head on the frozen backbone (or on the Embedder's vectors of it)."""
        parts, config = self.parts, self.config
        self.history["head_inputs"] = HEAD_INPUTS_IMAGES
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

        Given the Embedder's output, they are read from it. Otherwise, with
        fine-tuning ahead on cached inputs, the backbone's frozen bottom runs
        over the images (its output is kept for phase 2) and the pooled features
        come from its top; else the whole backbone runs over the images.
        """
        parts, tuning = self.parts, self.config.fine_tuning
        if self.data.embeddings_uri is not None:
            self.history["head_inputs"] = HEAD_INPUTS_EMBEDDER
            return self._embedder_cache()
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

    def _embedder_cache(self) -> _Cache:
        """The Embedder's vectors of the train and eval examples, checked against their counts.

        Raises:
            ValueError: A split's vectors are not one per example the Trainer reads.
        """
        (width,) = self.parts.head_top.input_shape[1:]
        cached = []
        for split in _SPLITS:
            vectors, label_ids = self.data.embeddings(split, width)
            if len(label_ids) != self.split_examples[split]:
                raise ValueError(
                    f"embeddings {self.data.embeddings_uri}: {len(label_ids)} {split} vectors "
                    f"for {self.split_examples[split]} {split} examples; the Embedder must "
                    "read the Trainer's examples")
            cached.append(([vectors], label_ids))
        progress_events.report(progress_events.Progress(
            "embeddings read", sum(self.split_examples.values()), unit="examples"))
        return _Cache(*cached)

    def _extract_cache(self, feature_model: tf.keras.Model) -> _Cache:
        """Runs `feature_model` once over every train and eval image.

        On the engine `config.feature_engine` chooses (see `trainer.feature_engine`).
        """
        setting = self.config.feature_engine
        engine = feature_engines.tflite_or_none(feature_model, setting, self._check_images)
        self.history["feature_engine"] = (
            FEATURE_ENGINE_TENSORFLOW if engine is None else FEATURE_ENGINE_TFLITE)
        counted = _FeatureProgress(self.split_examples)
        if engine is not None and setting == FEATURE_ENGINE_AUTO:
            engine = feature_engines.MeasuredEngine({
                FEATURE_ENGINE_TENSORFLOW: feature_engines.TensorFlowModel(feature_model),
                FEATURE_ENGINE_TFLITE: engine})
        if engine is not None:
            return _Cache(*(self._run_engine(engine, split, counted) for split in _SPLITS))
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
            counted.start_split(split)
            *arrays, label_ids = extractor.predict(batches, verbose=0, callbacks=[counted])
            counted.split_done(len(label_ids))
            return arrays, label_ids

        return _Cache(train=run(features.TRAIN_SPLIT), eval=run(features.EVAL_SPLIT))

    def _check_images(self) -> np.ndarray:
        """A few transformed training images, to check a feature engine on."""
        batch = self.data.images_and_labels(features.TRAIN_SPLIT, feature_engines.CHECK_IMAGES)
        batch = batch.take(1)
        return next(iter(batch))[0].numpy()

    def _run_engine(
        self, engine: feature_engines.Engine, split: str, counted: _FeatureProgress
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """`engine`'s outputs for every image of `split`, and the label ids.

        A `MeasuredEngine` chooses on the first split's first batches; its
        choice and both engines' rates go into the history.
        """
        outputs, labels = [], []
        counted.start_split(split)
        batches = self.data.images_and_labels(split, FEATURE_BATCH_SIZE)
        for images, label_ids in batches.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
            if len(label_ids):
                outputs.append(engine(images))
                labels.append(label_ids)
                counted.on_predict_batch_end(len(labels) - 1)
        counted.split_done(sum(len(ids) for ids in labels))
        if isinstance(engine, feature_engines.MeasuredEngine):
            self.history["feature_engine"] = engine.name
            self.history["feature_engine_rates"] = engine.rates
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
        if not embeddings.cached_inputs_apply(config):
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
            weight_decay=self.config.weight_decay,
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
            phase=phase,
        )
        self.history[phase] = history
        self.history["path"][phase] = path
        if best.best_epoch is not None:
            self._best_val_loss = best.best
            self.history["best"] = {
                "phase": phase, "epoch": best.best_epoch + 1,
                **{name: values[best.best_epoch] for name, values in history.items()},
            }


class _FeatureProgress(tf.keras.callbacks.Callback):
    """Reports images run through the frozen backbone, out of every train and eval example.

    Within a split a batch counts FEATURE_BATCH_SIZE images, at most the split's
    size; when the split ends the count is the images it really had.
    """

    def __init__(self, split_sizes: dict[str, int]) -> None:
        super().__init__()
        self.split_sizes = split_sizes
        self.total = sum(split_sizes.values())
        self.before = 0  # Images of the splits already done.
        self.ceiling = 0  # Where the split under way ends.

    def start_split(self, split: str) -> None:
        self.ceiling = self.before + self.split_sizes[split]

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._report(min(self.before + (batch + 1) * FEATURE_BATCH_SIZE, self.ceiling))

    def split_done(self, images: int) -> None:
        self.before += images
        self._report(self.before)

    def _report(self, done: int) -> None:
        progress_events.report(
            progress_events.Progress("backbone features", done, self.total, "images"))


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
