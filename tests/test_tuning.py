"""The head search: real KerasTuner trials on in-memory vectors, and its settings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from trainer import tuning
from trainer.config import AugmentationConfig, HeadConfig, TrainingConfig, TuningConfig
from trainer.config_file import ConfigError


def _separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    vectors = rng.normal(0, 0.3, (n, 8)).astype(np.float32)
    vectors[np.arange(n), labels] += 3.0
    return vectors, labels


def _search(tmp_path, config: TrainingConfig) -> tuning.HeadSearch:
    (train, train_labels), validation = _separable(120, 0), _separable(60, 1)
    search = tuning.HeadSearch(
        oracle=tuning._BudgetedOracle(config),  # noqa: SLF001 (the search's own oracle)
        hypermodel=tuning._HeadModel(config, 8, 3, len(train_labels)),  # noqa: SLF001
        directory=str(tmp_path), project_name="search", overwrite=True)
    search.search(x=train, y=train_labels, validation_data=validation, epochs=3,
                  batch_size=32, verbose=0)
    return search


def test_the_search_starts_from_the_configured_head_and_keeps_its_trial_budget(tmp_path):
    config = TrainingConfig(head=HeadConfig(dropout=0.3), learning_rate=0.01,
                            tuning=TuningConfig(enabled=True, max_trials=3))
    search = _search(tmp_path, config)
    trials = sorted(search.oracle.trials.values(), key=lambda trial: trial.trial_id)
    assert len(trials) == 3
    assert trials[0].hyperparameters.values == {
        "dense_units": 0, "dropout": 0.3, "learning_rate": 0.01, "optimizer": "adam",
        "weight_decay": 0.0}
    summary = search.summary()
    assert summary["trials"] == 3 and summary["objective"] == "val_accuracy"
    assert summary["best_score"] == max(trial.score for trial in trials)
    assert summary["configured"] == trials[0].hyperparameters.values


def test_no_trial_but_the_first_starts_after_the_time_budget(tmp_path):
    config = TrainingConfig(tuning=TuningConfig(enabled=True, max_trials=5, max_seconds=1e-6))
    assert len(_search(tmp_path, config).oracle.trials) == 1


def test_the_best_settings_replace_the_configured_head():
    config = TrainingConfig(head=HeadConfig(dense_units=(64, 32), dropout=0.1))
    tuned = tuning.with_hyperparameters(config, {
        "dense_units": 256, "dropout": 0.4, "learning_rate": 0.003, "optimizer": "rmsprop",
        "weight_decay": 1e-4})
    assert tuned.head == dataclasses.replace(config.head, dense_units=(256,), dropout=0.4)
    assert (tuned.learning_rate, tuned.optimizer, tuned.weight_decay) == (0.003, "rmsprop", 1e-4)
    assert tuning.with_hyperparameters(config, {
        "dense_units": 0, "dropout": 0.0, "learning_rate": 0.001, "optimizer": "sgd",
        "weight_decay": 0.0}).head.dense_units == ()


def test_the_trainer_reads_the_best_values_and_the_search_record():
    best = {"space": [], "values": {
        "dense_units": 128, "dropout": 0.2, "learning_rate": 0.001, "optimizer": "adam",
        "weight_decay": 0.0}, "search": {"trials": 4, "best_score": 0.9}}
    assert tuning.best_values(None) is None and tuning.search_record(None) is None
    assert tuning.search_record(best) == {"values": best["values"], "trials": 4,
                                          "best_score": 0.9}


@pytest.mark.parametrize("settings, message", [
    ({"tuning": {"enabled": True}, "augmentation": AugmentationConfig(horizontal_flip=True)},
     "tuning searches heads on the cached backbone vectors"),
    ({"tuning": {"enabled": True}, "cache_features": False},
     "tuning searches heads on the cached backbone vectors"),
    ({"tuning": {"max_trials": 0}}, "tuning.max_trials must be at least 1, got 0"),
    ({"tuning": {"max_seconds": 0.0}}, "tuning.max_seconds must be more than 0"),
    ({"weight_decay": 1.5}, "weight_decay must be in [0, 1), got 1.5"),
])
def test_impossible_tuning_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        TrainingConfig(**{key: TuningConfig(**value) if key == "tuning" else value
                          for key, value in settings.items()}).validate()
