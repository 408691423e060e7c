"""Unfreezing the top of a backbone, and cutting it where the frozen part ends."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import backbones, fine_tuning

PIXELS = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def mobilenet():
    return backbones.build_frozen_base("mobilenet_v2", 32, "none")


def test_top_layers_train_and_batch_norm_stays_frozen(mobilenet):
    unfrozen = fine_tuning.unfreeze_top_layers(mobilenet, 10)
    top = fine_tuning.top_layers(mobilenet, 10)
    assert [layer.name for layer in top][-1] == "out_relu" and len(top) == 10
    batch_norm = tf.keras.layers.BatchNormalization
    assert unfrozen == [layer.name for layer in top
                        if layer.weights and not isinstance(layer, batch_norm)]
    for layer in mobilenet.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            assert not layer.trainable, layer.name
    trainable = {id(w) for w in mobilenet.trainable_weights}
    below = [w for layer in mobilenet.layers[:-10] for w in layer.weights]
    assert below and not any(id(w) in trainable for w in below)
    mobilenet.trainable = False


def test_all_unfreezes_every_layer_but_batch_norm(mobilenet):
    fine_tuning.unfreeze_top_layers(mobilenet, "all")
    assert len(mobilenet.trainable_weights) == sum(
        len(layer.trainable_weights) for layer in mobilenet.layers
        if not isinstance(layer, tf.keras.layers.BatchNormalization))
    assert mobilenet.get_layer("Conv1").trainable
    mobilenet.trainable = False


@pytest.mark.parametrize("count", [1, 10, 23])
def test_bottom_then_top_is_the_backbone(mobilenet, count):
    bottom, top = fine_tuning.split_at_frozen_boundary(mobilenet, count)
    np.testing.assert_allclose(top(bottom(PIXELS, training=False), training=False),
                               mobilenet(PIXELS, training=False), rtol=1e-5, atol=1e-5)
    top_layers = {id(layer) for layer in fine_tuning.top_layers(mobilenet, count)}
    assert {id(layer) for layer in top.layers
            if not isinstance(layer, tf.keras.layers.InputLayer)} == top_layers


def test_a_residual_branch_crossing_the_cut_is_kept():
    # Cutting inside block_15 leaves its skip input (block_14_add) below the cut too.
    base = backbones.build_frozen_base("mobilenet_v2", 32, "none")
    count = len(base.layers) - [layer.name for layer in base.layers].index("block_15_depthwise")
    bottom, top = fine_tuning.split_at_frozen_boundary(base, count)
    assert len(bottom.outputs) == 2
    np.testing.assert_allclose(top(bottom(PIXELS)), base(PIXELS), rtol=1e-5, atol=1e-5)


def test_nothing_to_cache_when_everything_trains(mobilenet):
    assert fine_tuning.split_at_frozen_boundary(mobilenet, "all") is None
    assert fine_tuning.split_at_frozen_boundary(mobilenet, 10_000) is None
