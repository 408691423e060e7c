"""One training phase: the best epoch is restored, with or without early stopping."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from trainer import training


def _model():
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((4,))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2, activation="softmax")(inputs))
    training.compile_for_training(model, "adam", 0.01)
    return model


def _set(model, value):
    for weight in model.trainable_weights:
        weight.assign(tf.fill(weight.shape, value))


def test_best_epoch_weights_come_back_at_the_end():
    model, best = _model(), training.BestWeights()
    best.set_model(model)
    best.on_train_begin()
    _set(model, 1.0)
    best.on_epoch_end(0, {"val_loss": 0.5})
    _set(model, 2.0)
    best.on_epoch_end(1, {"val_loss": 0.9})  # worse: not kept
    best.on_train_end()
    assert all(np.all(w.numpy() == 1.0) for w in model.trainable_weights)
    assert (best.best, best.best_epoch) == (0.5, 0)


def test_a_phase_that_never_beats_the_last_ends_where_it_started():
    model, best = _model(), training.BestWeights(initial_best=0.1)
    _set(model, 3.0)
    best.set_model(model)
    best.on_train_begin()
    _set(model, 4.0)
    best.on_epoch_end(0, {"val_loss": 0.2})
    best.on_train_end()
    assert all(np.all(w.numpy() == 3.0) for w in model.trainable_weights)
    assert best.best_epoch is None


def test_fit_phase_keeps_history_logs_and_the_best_epoch(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = _model()
    history, best = training.fit_phase(
        model, (x, y), (x, y), epochs=4, patience=10, log_dir=str(tmp_path / "head"),
        batch_size=8)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["loss"]) == 4
    assert best.best == min(history["val_loss"])
    assert model.evaluate(x, y, verbose=0)[0] == pytest.approx(best.best, rel=1e-5)
    assert os.listdir(tmp_path / "head")


def test_early_stopping_ends_a_phase_that_does_not_improve(tmp_path):
    x = np.zeros((8, 4), np.float32)
    y = np.array([0, 1] * 4)
    history, _ = training.fit_phase(
        _model(), (x, y), (x, y), epochs=20, patience=1, log_dir=str(tmp_path),
        batch_size=8, initial_best=0.0)
    assert len(history["loss"]) < 20


@pytest.mark.parametrize("name", ["adam", "rmsprop", "sgd"])
def test_optimizers(name):
    optimizer = training.make_optimizer(name, 1e-3)
    assert math.isclose(float(optimizer.learning_rate), 1e-3, rel_tol=1e-6)
