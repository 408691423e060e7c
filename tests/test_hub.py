"""A local TF-Hub feature-vector SavedModel as backbone, frozen or fine-tuned."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tests import trainer_testing
from tests.test_backbones import save_feature_vector
from trainer import backbones, hub, model
from trainer.config import AugmentationConfig, FineTuningConfig, TrainingConfig

# Batches of 12 split the 60 training and 12 eval images evenly: each phase's
# steps are traced once, not again for a smaller last batch.
IMAGES = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def feature_vector(tmp_path_factory):
    return save_feature_vector(tmp_path_factory.mktemp("hub") / "feature_vector")


def test_the_layer_runs_the_saved_model_and_owns_its_weights(feature_vector):
    layer = hub.SavedModelFeatureVector(feature_vector)
    vectors = layer(IMAGES)
    assert vectors.shape == (4, 6)
    assert not layer.trainable_weights and len(layer.non_trainable_weights) == 6
    layer.trainable = True
    assert len(layer.trainable_weights) == 4  # conv kernel and bias, BN gamma and beta
    # A trainable module runs in training mode only when asked (BatchNormalization).
    np.testing.assert_allclose(layer(IMAGES, training=False), vectors, rtol=1e-5)
    assert not np.allclose(layer(IMAGES, training=True), vectors)


def test_a_classifier_on_the_module_saves_and_reloads(feature_vector, tmp_path):
    base = backbones.build_frozen_base(backbones.HUB_PREFIX + feature_vector, 32, "imagenet")
    module = tf.Module()
    module.base = base
    module.serve = tf.function(lambda x: base(x), input_signature=[
        tf.TensorSpec([None, 32, 32, 3], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "saved"))
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(loaded.serve(IMAGES), base(IMAGES), rtol=1e-5)


def test_a_module_for_other_sizes_is_refused_clearly(tmp_path):
    class FixedSize(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.ones([3, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None, 64, 64, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images, [1, 2]) @ self.w

    tf.saved_model.save(FixedSize(), str(tmp_path / "fixed"))
    with pytest.raises(ValueError, match="does not take 32x32 RGB images"):
        backbones.build_base(f"hub:{tmp_path / 'fixed'}", 32, "imagenet")


def test_trainer_fine_tunes_the_whole_module_with_augmentation(feature_vector, tmp_path):
    config = TrainingConfig(
        backbone=backbones.HUB_PREFIX + feature_vector, image_size=32, epochs=2, batch_size=12,
        augmentation=AugmentationConfig(horizontal_flip=True, rotation=0.2),
        fine_tuning=FineTuningConfig(unfreeze_layers=10, learning_rate=0.01, epochs=2),
    )
    fn_args = trainer_testing.fn_args_for(config, tmp_path)
    history = model.train_and_export(fn_args)
    assert history["unfrozen_layers"] == ["feature_vector"]
    assert history["path"] == {"head": "end_to_end", "fine_tuning": "end_to_end"}
    _, _, eval_rows = trainer_testing.colour_examples()
    served = trainer_testing.serve(fn_args.serving_model_dir, [i for i, _ in eval_rows[:4]])
    assert served["scores"].shape == (4, 3)


def test_frozen_module_uses_the_fast_path(feature_vector, tmp_path):
    config = TrainingConfig(backbone=backbones.HUB_PREFIX + feature_vector, image_size=32,
                            epochs=2, batch_size=12)
    history = model.train_and_export(trainer_testing.fn_args_for(config, tmp_path))
    assert history["path"] == {"head": "cached_features"}
    assert dataclasses.asdict(config)["weights"] == "imagenet"
