"""Warm start: which saved heads fit a run, and a real save -> restore round trip."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from tests import trainer_testing
from trainer import classifier, model, warm_start
from trainer.config import (
    FEATURE_ENGINE_TENSORFLOW,
    FineTuningConfig,
    HeadConfig,
    TrainingConfig,
)
from trainer.warm_start import Manifest

CONFIG = TrainingConfig(
    backbone="efficientnet_lite0", weights="imagenet", image_size=32, epochs=2,
    batch_size=12, learning_rate=0.01, head=HeadConfig(dense_units=(8,)),
)  # batches of 12 split the 60 training and 12 eval images evenly: no retracing
CLASSES = ["red", "green", "blue"]  # the vocabulary order of the colour examples


# ---------------------------------------------------------------------- decision


def _manifest(config=CONFIG, classes=CLASSES, backbone_saved=False) -> Manifest:
    return Manifest.for_run(config, classes, backbone_saved)


def test_the_same_settings_and_classes_fit_in_any_order():
    assert warm_start.mismatch(_manifest(), _manifest()) is None
    assert warm_start.mismatch(_manifest(), _manifest(classes=CLASSES[::-1])) is None
    # Dropout, optimizer and epochs shape no weight.
    other = dataclasses.replace(CONFIG, epochs=9, optimizer="sgd",
                                head=dataclasses.replace(CONFIG.head, dropout=0.5))
    assert warm_start.mismatch(_manifest(), _manifest(other)) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"backbone": "mobilenet_v2"}, "backbone was 'efficientnet_lite0', now 'mobilenet_v2'"),
        ({"image_size": 64}, "image_size was 32, now 64"),
        ({"weights": "none"}, "weights was 'imagenet', now 'none'"),
        ({"head": HeadConfig(dense_units=(16,))}, r"head.dense_units was \[8\], now \[16\]"),
        ({"head": HeadConfig(dense_units=(8,), pooling="max")}, "head.pooling was 'avg'"),
    ],
)
def test_a_different_shape_or_backbone_does_not_fit(change, reason):
    found = warm_start.mismatch(_manifest(), _manifest(dataclasses.replace(CONFIG, **change)))
    assert found is not None and re.search(reason, found), found


def test_other_classes_do_not_fit():
    reason = warm_start.mismatch(_manifest(), _manifest(classes=["blue", "red", "yellow"]))
    assert reason == ("the classes were ['blue', 'green', 'red'], "
                      "now ['blue', 'red', 'yellow']")


def test_a_saved_backbone_carries_its_own_weights():
    other_weights = dataclasses.replace(CONFIG, weights="none")
    assert warm_start.mismatch(_manifest(backbone_saved=True), _manifest(other_weights)) is None


def test_manifest_round_trips_through_json():
    manifest = _manifest(backbone_saved=True)
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_off_or_no_base_trains_from_scratch():
    parts = classifier.build_parts(dataclasses.replace(CONFIG, weights="none"), 3)
    off = dataclasses.replace(CONFIG, warm_start=False)
    assert warm_start.restore("/m/7/Format-Serving", parts, off, CLASSES) == {
        "from": "/m/7", "used": False, "reason": "warm_start is off"}
    assert warm_start.restore(None, parts, CONFIG, CLASSES)["used"] is False


# -------------------------------------------------------------------- round trip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real training run, fine-tuned so the backbone is saved too.

    Its cached features come from TensorFlow: warm start does not depend on the
    feature engine, which `test_model` and `test_feature_engine` test.
    """
    config = dataclasses.replace(
        CONFIG, fine_tuning=FineTuningConfig(unfreeze_layers=2, learning_rate=1e-3, epochs=1),
        feature_engine=FEATURE_ENGINE_TENSORFLOW)
    fn_args = trainer_testing.fn_args_for(config, tmp_path_factory.mktemp("first"))
    history = model.train_and_export(fn_args)
    return config, fn_args, history


def test_training_saves_a_checkpoint_inside_the_serving_model(trained):
    config, fn_args, history = trained
    folder = os.path.join(fn_args.serving_model_dir, "assets.extra", "warm_start")
    assert tf.io.gfile.exists(folder + "/weights.index")
    manifest = json.loads(open(folder + "/manifest.json").read())
    assert manifest["backbone_saved"] is True and manifest["class_names"] == CLASSES
    assert history["warm_start"] == {"from": None, "used": False,
                                     "reason": "no model was being served when this data arrived"}


def test_restore_loads_the_head_and_fine_tuned_backbone(trained):
    config, fn_args, _ = trained
    first = classifier.build_parts(config, 3)
    tf.train.Checkpoint(head=first.head_top, backbone=first.base).read(
        warm_start.warm_start_dir(fn_args.serving_model_dir) + "/weights").expect_partial()

    parts = classifier.build_parts(config, 3)
    record = warm_start.restore(fn_args.serving_model_dir, parts, config, CLASSES)

    assert record == {"from": str(fn_args.serving_model_dir).rsplit("/", 1)[0], "used": True,
                      "backbone": True}
    weights = (parts.classifier.get_weights(), first.classifier.get_weights())
    for got, want in zip(*weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_restore_reorders_the_scores_to_this_run_s_classes(trained):
    config, fn_args, _ = trained
    saved = classifier.build_parts(config, 3)
    warm_start.restore(fn_args.serving_model_dir, saved, config, CLASSES)
    reordered = classifier.build_parts(config, 3)
    warm_start.restore(fn_args.serving_model_dir, reordered, config, ["blue", "red", "green"])

    vectors = np.random.default_rng(0).normal(size=(4, *saved.head_top.input_shape[1:]))
    before = saved.head_top(vectors.astype("float32"), training=False).numpy()
    after = reordered.head_top(vectors.astype("float32"), training=False).numpy()
    np.testing.assert_allclose(after, before[:, [2, 0, 1]], rtol=1e-5, atol=1e-6)


def test_a_second_run_starts_from_the_first_and_records_it(trained, tmp_path):
    config, first_args, _ = trained
    fn_args = trainer_testing.fn_args_for(config, tmp_path)
    fn_args.base_model = first_args.serving_model_dir
    history = model.train_and_export(fn_args)
    assert history["warm_start"]["used"] is True

    other_head = dataclasses.replace(config, head=HeadConfig(dense_units=(4,)))
    fn_args = trainer_testing.fn_args_for(other_head, tmp_path / "other")
    fn_args.base_model = first_args.serving_model_dir
    parts = classifier.build_parts(other_head, 3)
    record = warm_start.restore(fn_args.base_model, parts, other_head, CLASSES)
    assert record["used"] is False and record["reason"] == "head.dense_units was [8], now [4]"
