"""One training phase: compile, fit with early stopping, keep the best epoch.

Each phase logs to TensorBoard under its own folder of the model run directory,
reports every epoch as a progress event (loss, accuracy and their validation
values; Keras' own epoch lines only with `--verbose`) and returns its per-epoch
history. Early stopping watches the validation loss;
`BestWeights` restores the best epoch's weights at the end whether or not early
stopping fired (Keras' own `restore_best_weights` only restores when it fires).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import tensorflow as tf

from trainer import progress_events

MONITOR = "val_loss"
# In-memory arrays train a whole epoch per call into TensorFlow, up to this many
# steps: the same steps, without Python between them. Datasets of unknown size
# (read through the Transform graph) take one step a call.
MAX_ARRAY_STEPS_PER_EXECUTION = 1000


def array_steps_per_execution(examples: int, batch_size: int) -> int:
    """Steps per call for `examples` in-memory examples: one epoch, at most the maximum."""
    return max(1, min(math.ceil(examples / batch_size), MAX_ARRAY_STEPS_PER_EXECUTION))


def make_optimizer(
    name: str, learning_rate: float, weight_decay: float = 0.0
) -> tf.keras.optimizers.Optimizer:
    """"adam", "rmsprop" or "sgd" (with momentum 0.9) at `learning_rate`.

    `weight_decay` > 0 adds Keras' decoupled weight decay (AdamW's, for Adam).
    """
    decay = {"weight_decay": weight_decay} if weight_decay else {}
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate, **decay)
    if name == "rmsprop":
        return tf.keras.optimizers.RMSprop(learning_rate, **decay)
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate, momentum=0.9, **decay)
    raise ValueError(f"unknown optimizer {name!r}")


def compile_for_training(
    model: tf.keras.Model, optimizer: str, learning_rate: float, steps_per_execution: int = 1,
    weight_decay: float = 0.0,
) -> None:
    """Cross-entropy on the model's class scores (probabilities), and accuracy."""
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate, weight_decay),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )


class BestWeights(tf.keras.callbacks.Callback):
    """Keeps the trainable weights of the epoch with the lowest validation loss.

    At the end of training they are restored. With `initial_best` (the best
    loss of an earlier phase), the starting weights count as that epoch, so a
    phase that never beats it ends with the weights it started from.
    """

    def __init__(self, initial_best: float = math.inf) -> None:
        super().__init__()
        self.initial_best = initial_best
        self.best = initial_best
        self.best_epoch: int | None = None
        self._best_weights: list[np.ndarray] = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.best = self.initial_best
        self.best_epoch = None
        self._best_weights = self._snapshot()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(MONITOR)
        if value is not None and value < self.best:
            self.best, self.best_epoch = float(value), epoch
            self._best_weights = self._snapshot()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for variable, value in zip(self.model.trainable_weights, self._best_weights, strict=True):
            variable.assign(value)

    def _snapshot(self) -> list[np.ndarray]:
        return [variable.numpy() for variable in self.model.trainable_weights]


class EpochProgress(tf.keras.callbacks.Callback):
    """Reports each finished epoch of phase `phase`: 'head 3 of 10 epochs: loss 0.5120, ...'."""

    def __init__(self, phase: str, epochs: int) -> None:
        super().__init__()
        self.phase = phase
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        progress_events.report(progress_events.Progress(
            self.phase, epoch + 1, self.epochs, "epochs", detail=epoch_figures(logs or {})))


def epoch_figures(logs: dict[str, Any]) -> str:
    """'loss 0.5120, accuracy 0.8125, val_loss ...': training figures first, then validation."""
    def order(name: str) -> tuple[bool, bool, str]:
        figure = name.removeprefix("val_")
        return name.startswith("val_"), figure != "loss", figure

    names = sorted(logs, key=order)
    return ", ".join(f"{name} {float(logs[name]):.4f}" for name in names)


def fit_phase(
    model: tf.keras.Model,
    train: Any,
    validation: Any,
    *,
    epochs: int,
    patience: int,
    log_dir: str,
    batch_size: int | None = None,
    class_weight: dict[int, float] | None = None,
    initial_best: float = math.inf,
    phase: str = "training",
) -> tuple[dict[str, list[float]], BestWeights]:
    """Fits a compiled `model`; ends with its best epoch's weights.

    Args:
        model: Compiled model to train.
        train: A tf.data.Dataset of (inputs, labels) batches, or an (inputs,
            labels) tuple of arrays (then `batch_size` applies, and the arrays
            are shuffled every epoch).
        validation: The same, for validation.
        epochs: Most epochs to train.
        patience: Epochs without a better validation loss before stopping.
        log_dir: TensorBoard log directory of this phase.
        batch_size: Batch size for array inputs.
        class_weight: Loss weight per class id.
        initial_best: Validation loss to beat (an earlier phase's best).
        phase: The phase's name in its epochs' progress events.

    Returns:
        The per-epoch history (metric -> values) and the `BestWeights` callback
        (its `best` and `best_epoch`).
    """
    best = BestWeights(initial_best)
    callbacks = [
        tf.keras.callbacks.EarlyStopping(
            monitor=MONITOR, patience=patience,
            baseline=None if math.isinf(initial_best) else initial_best,
        ),
        best,
        tf.keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False, update_freq="epoch"),
        EpochProgress(phase, epochs),
    ]
    tf.io.gfile.makedirs(log_dir)
    arrays = isinstance(train, tuple)
    history = model.fit(
        *(train if arrays else (train,)),
        validation_data=validation,
        epochs=epochs,
        batch_size=batch_size if arrays else None,
        shuffle=arrays,
        class_weight=class_weight,
        callbacks=callbacks,
        verbose=progress_events.keras_verbosity(),
    )
    return {name: [float(v) for v in values] for name, values in history.history.items()}, best


def log_dir_for(model_run_dir: str, phase: str) -> str:
    """TensorBoard folder of `phase` in the model run directory."""
    return os.path.join(model_run_dir, phase)
