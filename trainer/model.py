"""The Trainer module: a frozen pretrained backbone plus a new classification head.

The backbone is frozen, so its output for an image never changes during
training. `run_fn` therefore runs it once over the train and eval data, trains
the head on those cached features, and assembles Transform + backbone + head
into the exported model.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from trainer import backbones, export, features
from trainer.config import TrainingConfig

HISTORY_FILE = "history.json"
_FEATURE_BATCH_SIZE = 64


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Trains the classifier and exports it; TFX Trainer's entry point."""
    config = TrainingConfig.from_dict(fn_args.custom_config)
    tf.keras.utils.set_random_seed(config.seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    num_classes = len(export.class_names(tf_transform_output))

    base = backbones.build_frozen_base(config.backbone, config.input_size, config.weights)
    train_x, train_y = _extract_features(base, fn_args.train_files, fn_args, tf_transform_output)
    eval_x, eval_y = _extract_features(base, fn_args.eval_files, fn_args, tf_transform_output)

    head = build_head(base.output_shape[1:], num_classes, config)
    history = _fit_head(head, (train_x, train_y), (eval_x, eval_y), config, fn_args.model_run_dir)

    classifier = build_classifier(base, head, config.input_size)
    export.export_serving_model(classifier, tf_transform_output, fn_args.serving_model_dir)
    _write_history(history, fn_args.model_run_dir)


def build_head(
    feature_shape: tuple[int, ...], num_classes: int, config: TrainingConfig
) -> tf.keras.Model:
    """The new head: global average pooling, dropout, dense softmax."""
    feature_map = tf.keras.Input(shape=feature_shape, name="backbone_features")
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(feature_map)
    x = tf.keras.layers.Dropout(config.dropout, seed=config.seed, name="dropout")(x)
    scores = tf.keras.layers.Dense(num_classes, activation="softmax", name="scores")(x)
    head = tf.keras.Model(feature_map, scores, name="head")
    head.compile(
        optimizer=tf.keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return head


def build_classifier(base: tf.keras.Model, head: tf.keras.Model, image_size: int) -> tf.keras.Model:
    """Transformed image -> class scores: the frozen base followed by the head."""
    image = tf.keras.Input(shape=(image_size, image_size, 3), name=features.TRANSFORMED_IMAGE_KEY)
    return tf.keras.Model(image, head(base(image, training=False)), name="classifier")


def _transformed_batches(
    file_pattern: list[str],
    fn_args: tfx.components.FnArgs,
    tf_transform_output: tft.TFTransformOutput,
) -> tf.data.Dataset:
    """Raw examples read once, in order, through the Transform graph."""
    dataset = fn_args.data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(
            batch_size=_FEATURE_BATCH_SIZE, shuffle=False, num_epochs=1
        ),
        tf_transform_output.raw_metadata.schema,
    )
    tft_layer = tf_transform_output.transform_features_layer()
    return dataset.map(
        lambda raw: tft_layer(
            {key: raw[key] for key in (features.IMAGE_KEY, features.LABEL_KEY)}
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).prefetch(tf.data.AUTOTUNE)


def _extract_features(
    base: tf.keras.Model,
    file_pattern: list[str],
    fn_args: tfx.components.FnArgs,
    tf_transform_output: tft.TFTransformOutput,
) -> tuple[np.ndarray, np.ndarray]:
    """Runs the frozen base once over every example; returns (features, labels)."""
    run_base = tf.function(lambda images: base(images, training=False))
    feature_batches, label_batches = [], []
    for batch in _transformed_batches(file_pattern, fn_args, tf_transform_output):
        feature_batches.append(run_base(batch[features.TRANSFORMED_IMAGE_KEY]).numpy())
        label_batches.append(batch[features.TRANSFORMED_LABEL_KEY].numpy())
    if not feature_batches:
        raise ValueError(f"no examples found in {file_pattern}")
    return np.concatenate(feature_batches), np.concatenate(label_batches)


def _fit_head(
    head: tf.keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    config: TrainingConfig,
    log_dir: str,
) -> dict[str, list[float]]:
    """Trains the head with early stopping on validation loss; keeps the best epoch."""
    callbacks = [
        tf.keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=config.early_stopping_patience,
            restore_best_weights=True,
        ),
        tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"),
    ]
    history = head.fit(
        *train,
        validation_data=validation,
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=2,
    )
    return {name: [float(v) for v in values] for name, values in history.history.items()}


def _write_history(history: dict[str, list[float]], log_dir: str) -> None:
    tf.io.gfile.makedirs(log_dir)
    with tf.io.gfile.GFile(os.path.join(log_dir, HISTORY_FILE), "w") as f:
        json.dump(history, f, indent=2)
