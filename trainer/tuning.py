"""The head search: KerasTuner over the head's settings, on the Embedder's vectors.

`tuner_fn` is the entry point of TFX's Tuner (the `Tuner` node,
`components.tuner`), which runs it when `tuning.enabled` (`--tune`). Each trial
trains a new head (`trainer.classifier.build_head_top`) on the frozen
backbone's vectors the Embedder computed, exactly as the Trainer's head phase
does, so a trial costs a few passes over in-memory vectors and never runs the
backbone. The search is Bayesian optimization of the validation accuracy over
`SEARCH_SPACE`; its first trial is the configured head, so the settings found
are never worse on validation than the configured ones. It stops after
`tuning.max_trials` trials or once `tuning.max_seconds` have passed (no trial
but the first starts after that).

The best settings and a summary of the search (`search_record`) go to the
Trainer as TFX's `best_hyperparameters` artifact; the Trainer trains with them
(`with_hyperparameters`) and records them in its history under `HISTORY_KEY`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import keras_tuner
import numpy as np
import tensorflow as tf
from keras_tuner.engine import trial as trial_module
from tfx import v1 as tfx

from trainer import classifier, embeddings, features, phases, progress_events, training
from trainer.config import OPTIMIZERS, TrainingConfig
from trainer.data import TrainingData

DENSE_UNITS = "dense_units"
DROPOUT = "dropout"
LEARNING_RATE = "learning_rate"
OPTIMIZER = "optimizer"
WEIGHT_DECAY = "weight_decay"
SEARCH_SPACE = {
    DENSE_UNITS: (0, 128, 256, 512),  # one hidden layer of this width; 0: none
    DROPOUT: (0.0, 0.5),  # in steps of 0.1
    LEARNING_RATE: (1e-4, 1e-2),  # sampled on a log scale
    OPTIMIZER: OPTIMIZERS,
    WEIGHT_DECAY: (0.0, 1e-5, 1e-4, 1e-3),
}
"""What the search varies, by hyperparameter: choices, or a (low, high) range."""
OBJECTIVE = "val_accuracy"
"""What the search maximises: the best epoch's accuracy on the eval split."""
HISTORY_KEY = "tuning"
"""`history[HISTORY_KEY]`: the search's record (`search_record`), or None untuned."""
SEARCH_KEY = "search"
"""In the best-hyperparameters file: the search's summary beside KerasTuner's config."""
_PROJECT = "head_search"


def tuner_fn(fn_args: tfx.components.FnArgs) -> tfx.components.TunerFnResult:
    """TFX Tuner's entry point: a search over head settings on the Embedder's vectors.

    The settings come in `fn_args.custom_config` (`TrainingConfig.to_dict()`), the
    embeddings' URI under the reserved key `trainer.embeddings.URI_KEY`.

    Raises:
        ValueError: No embeddings were given.
    """
    custom_config = dict(fn_args.custom_config or {})
    embeddings_uri = custom_config.pop(embeddings.URI_KEY, None)
    if embeddings_uri is None:
        raise ValueError("the Tuner searches on the Embedder's vectors; none were given")
    config = TrainingConfig.from_dict(custom_config)
    data = TrainingData.from_fn_args(fn_args, embeddings_uri)
    width = embeddings.vector_width(embeddings_uri, features.TRAIN_SPLIT)
    (train, train_labels), (validation, validation_labels) = (
        data.embeddings(split, width) for split in (features.TRAIN_SPLIT, features.EVAL_SPLIT))
    counts = np.bincount(train_labels, minlength=len(data.class_names))
    tuner = HeadSearch(
        oracle=_BudgetedOracle(config),
        hypermodel=_HeadModel(config, width, len(data.class_names), len(train_labels)),
        directory=fn_args.working_dir,
        project_name=_PROJECT,
        overwrite=True,
    )
    return tfx.components.TunerFnResult(tuner=tuner, fit_kwargs={
        "x": train,
        "y": train_labels,
        "validation_data": (validation, validation_labels),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "class_weight": phases.class_weights(config, data.class_names, counts),
        "callbacks": [tf.keras.callbacks.EarlyStopping(
            patience=config.early_stopping_patience, restore_best_weights=True)],
        "verbose": progress_events.keras_verbosity(),
    })


def search_space(config: TrainingConfig) -> keras_tuner.HyperParameters:
    """`SEARCH_SPACE` as KerasTuner hyperparameters, the configured head as defaults."""
    configured = configured_values(config)
    space = keras_tuner.HyperParameters()
    units = sorted({*SEARCH_SPACE[DENSE_UNITS], configured[DENSE_UNITS]})
    space.Choice(DENSE_UNITS, units, default=configured[DENSE_UNITS])
    low, high = SEARCH_SPACE[DROPOUT]
    space.Float(DROPOUT, low, high, step=0.1,
                default=min(max(configured[DROPOUT], low), high))
    low, high = SEARCH_SPACE[LEARNING_RATE]
    space.Float(LEARNING_RATE, low, high, sampling="log",
                default=min(max(configured[LEARNING_RATE], low), high))
    space.Choice(OPTIMIZER, list(SEARCH_SPACE[OPTIMIZER]), default=configured[OPTIMIZER])
    decays = sorted({*SEARCH_SPACE[WEIGHT_DECAY], configured[WEIGHT_DECAY]})
    space.Choice(WEIGHT_DECAY, decays, default=configured[WEIGHT_DECAY])
    return space


def configured_values(config: TrainingConfig) -> dict[str, Any]:
    """The configured head's settings, by hyperparameter name (the search's first trial).

    A head of several hidden layers is searched from one layer of the first's width.
    """
    return {
        DENSE_UNITS: config.head.dense_units[0] if config.head.dense_units else 0,
        DROPOUT: config.head.dropout,
        LEARNING_RATE: config.learning_rate,
        OPTIMIZER: config.optimizer,
        WEIGHT_DECAY: config.weight_decay,
    }


def with_hyperparameters(config: TrainingConfig, values: Mapping[str, Any]) -> TrainingConfig:
    """`config` with the searched settings in `values` (a trial's, or the best)."""
    units = int(values[DENSE_UNITS])
    head = dataclasses.replace(
        config.head, dense_units=(units,) if units else (), dropout=float(values[DROPOUT]))
    return dataclasses.replace(
        config, head=head, learning_rate=float(values[LEARNING_RATE]),
        optimizer=str(values[OPTIMIZER]), weight_decay=float(values[WEIGHT_DECAY]),
    ).validate()


def best_values(hyperparameters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The best settings from TFX's `fn_args.hyperparameters` (the Tuner's output); None untuned."""
    if not hyperparameters:
        return None
    return {name: hyperparameters["values"][name] for name in SEARCH_SPACE}


def search_record(hyperparameters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the Trainer records of the search (`history[HISTORY_KEY]`); None untuned.

    `{"values": best settings, "trials": n, "objective": OBJECTIVE, "best_score": x,
    "seconds": s, "configured": the first trial's settings}`.
    """
    values = best_values(hyperparameters)
    if values is None:
        return None
    return {"values": values, **dict(hyperparameters.get(SEARCH_KEY) or {})}


class HeadSearch(keras_tuner.Tuner):
    """KerasTuner's Tuner that reports each finished trial as progress.

    `summary()` is the search's record for the best-hyperparameters file.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._started = time.monotonic()

    def on_trial_end(self, trial: trial_module.Trial) -> None:
        super().on_trial_end(trial)
        best = self.oracle.get_best_trials(1)
        progress_events.report(progress_events.Progress(
            "head search", len(self.oracle.trials), self.oracle.max_trials, "trials",
            detail=f"best {OBJECTIVE} {best[0].score:.4f}" if best and best[0].score is not None
            else ""))

    def summary(self) -> dict[str, Any]:
        """The search's record: trials run, the best score, its time, the first trial."""
        completed = [trial for trial in self.oracle.trials.values()
                     if trial.status == trial_module.TrialStatus.COMPLETED]
        best = self.oracle.get_best_trials(1)
        return {
            "trials": len(completed),
            "objective": OBJECTIVE,
            "best_score": float(best[0].score) if best and best[0].score is not None else None,
            "seconds": round(time.monotonic() - self._started, 1),
            "configured": self.oracle.configured,
        }


class _HeadModel(keras_tuner.HyperModel):
    """A trial's head: `trainer.classifier`'s head top with the trial's settings, compiled."""

    def __init__(self, config: TrainingConfig, width: int, num_classes: int,
                 train_examples: int) -> None:
        super().__init__()
        self._config, self._width, self._num_classes = config, width, num_classes
        self._train_examples = train_examples

    def build(self, hp: keras_tuner.HyperParameters) -> tf.keras.Model:
        config = with_hyperparameters(self._config, {name: hp.get(name) for name in SEARCH_SPACE})
        tf.keras.utils.set_random_seed(config.seed)  # every trial starts alike
        head = classifier.build_head_top((self._width,), self._num_classes, config)
        training.compile_for_training(
            head, config.optimizer, config.learning_rate,
            steps_per_execution=training.array_steps_per_execution(
                self._train_examples, config.batch_size),
            weight_decay=config.weight_decay,
        )
        return head


class _BudgetedOracle(keras_tuner.oracles.BayesianOptimizationOracle):
    """Bayesian optimization that starts from the configured head and keeps a time budget."""

    def __init__(self, config: TrainingConfig) -> None:
        super().__init__(
            objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
            max_trials=config.tuning.max_trials,
            hyperparameters=search_space(config),
            seed=config.seed,
        )
        self.configured = configured_values(config)
        self._deadline = time.monotonic() + config.tuning.max_seconds

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        if not self.trials:  # the configured head, whatever the budget
            return {"status": trial_module.TrialStatus.RUNNING,
                    "values": self.hyperparameters.copy().values}
        if time.monotonic() >= self._deadline:
            return {"status": trial_module.TrialStatus.STOPPED, "values": None}
        return super().populate_space(trial_id)
