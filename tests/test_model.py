"""The Trainer module on real inputs: tf.Examples, a Transform graph, TFX's DataAccessor.

The backbone is EfficientNet-Lite0 with its real ImageNet weights (installed
offline) at 32 px, so features separate the colour classes from the start.
"""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from tests import trainer_testing
from trainer import classifier, export, local_inputs, model, phases
from trainer.config import (
    FEATURE_ENGINE_TENSORFLOW,
    FEATURE_ENGINE_TFLITE,
    ExportConfig,
    FineTuningConfig,
    HeadConfig,
    TrainingConfig,
)

# Full-batch SGD without dropout: the fast and the plain path then take the
# same steps, so they must end with the same model, up to float rounding (which
# Adam would magnify: its first steps follow the gradient's sign).
EXACT = TrainingConfig(
    backbone="efficientnet_lite0", weights="imagenet", image_size=32, epochs=5,
    batch_size=64, optimizer="sgd", learning_rate=0.1, head=HeadConfig(dropout=0.0),
    fine_tuning=FineTuningConfig(unfreeze_layers=5, learning_rate=0.01, epochs=2),
)
TWO_CLASSES = {"red": 10, "blue": 6}
TWO_CLASSES_EVAL = {"red": 4, "blue": 4}


def _eval_scores(fn_args):
    _, _, eval_rows = trainer_testing.colour_examples(
        tuple(trainer_testing.TRAIN_PER_CLASS.items()),
        tuple(trainer_testing.EVAL_PER_CLASS.items()))
    served = trainer_testing.serve(fn_args.serving_model_dir, [image for image, _ in eval_rows])
    return served, [label for _, label in eval_rows]


@pytest.fixture(scope="module")
def fast_and_plain(tmp_path_factory):
    """The same config trained on cached features (the default) and end to end."""
    runs = {}
    plain = dataclasses.replace(EXACT, cache_features=False)
    for name, config in (("fast", EXACT), ("plain", plain)):
        fn_args = trainer_testing.fn_args_for(config, tmp_path_factory.mktemp(name))
        history = model.train_and_export(fn_args)
        runs[name] = (fn_args, history)
    return runs


def test_fast_path_is_the_default_for_both_phases(fast_and_plain):
    _, history = fast_and_plain["fast"]
    assert history["path"] == {phases.HEAD_PHASE: phases.PATH_CACHED,
                               phases.FINE_TUNING_PHASE: phases.PATH_CACHED}
    # On a CPU-only machine auto times both engines and caches on the faster.
    rates = history["feature_engine_rates"]
    assert sorted(rates) == [FEATURE_ENGINE_TENSORFLOW, FEATURE_ENGINE_TFLITE]
    assert all(rate > 0 for rate in rates.values())
    assert history["feature_engine"] == max(rates, key=rates.get)
    _, plain_history = fast_and_plain["plain"]
    assert plain_history["path"] == {phases.HEAD_PHASE: phases.PATH_END_TO_END,
                                     phases.FINE_TUNING_PHASE: phases.PATH_END_TO_END}
    assert "feature_engine" not in plain_history  # the plain path caches nothing


def test_fast_path_trains_the_same_model_as_the_plain_path(fast_and_plain):
    (fast_args, fast), (plain_args, plain) = fast_and_plain["fast"], fast_and_plain["plain"]
    for phase in (phases.HEAD_PHASE, phases.FINE_TUNING_PHASE):
        np.testing.assert_allclose(fast[phase]["loss"], plain[phase]["loss"], rtol=1e-3)
        np.testing.assert_allclose(fast[phase]["val_accuracy"], plain[phase]["val_accuracy"])
    fast_served, labels = _eval_scores(fast_args)
    plain_served, _ = _eval_scores(plain_args)
    np.testing.assert_allclose(fast_served[export.SCORES_OUTPUT].numpy(),
                               plain_served[export.SCORES_OUTPUT].numpy(), atol=2e-3)
    predicted = fast_served[export.LABEL_OUTPUT].numpy()
    np.testing.assert_array_equal(predicted, plain_served[export.LABEL_OUTPUT].numpy())
    assert np.mean(predicted == np.array(labels, dtype=bytes)) >= 0.75  # chance: 1/3


def test_history_best_epoch_and_tensorboard_logs_are_kept(fast_and_plain):
    fn_args, history = fast_and_plain["fast"]
    with open(os.path.join(fn_args.model_run_dir, model.HISTORY_FILE)) as f:
        assert json.load(f) == history
    assert len(history[phases.HEAD_PHASE]["val_loss"]) == EXACT.epochs
    best = history["best"]
    best_phase = history[best["phase"]]
    assert best["val_loss"] == min(best_phase["val_loss"])
    assert best["val_loss"] <= min(history[phases.HEAD_PHASE]["val_loss"])
    for phase in (phases.HEAD_PHASE, phases.FINE_TUNING_PHASE):
        logs = tf.io.gfile.glob(os.path.join(fn_args.model_run_dir, phase, "*", "events.*"))
        assert logs, f"no TensorBoard events for {phase}"
    assert "top_conv" in history["unfrozen_layers"]
    assert not any("bn" in name for name in history["unfrozen_layers"])


@pytest.fixture(scope="module")
def binary_mixed_precision_run(tmp_path_factory):
    """One sigmoid unit, mixed precision on CPU, balanced class weights, a hidden layer."""
    config = dataclasses.replace(
        EXACT, head=HeadConfig(dense_units=(8,), dropout=0.1, binary=True),
        class_weights="auto", mixed_precision="on", epochs=6, batch_size=8,
        learning_rate=0.01, fine_tuning=FineTuningConfig(),
    )
    fn_args = trainer_testing.fn_args_for(
        config, tmp_path_factory.mktemp("binary"), train=TWO_CLASSES, eval_=TWO_CLASSES_EVAL)
    return fn_args, model.train_and_export(fn_args)


def test_binary_head_exports_two_scores_the_evaluator_reads(binary_mixed_precision_run):
    fn_args, _ = binary_mixed_precision_run
    _, _, eval_rows = trainer_testing.colour_examples(
        tuple(TWO_CLASSES.items()), tuple(TWO_CLASSES_EVAL.items()))
    examples = [local_inputs.serialized_example(image, label) for image, label in eval_rows]
    loaded = tf.saved_model.load(fn_args.serving_model_dir)
    # What the Evaluator reads: `scores` per class, named by `classes`, per example.
    served = loaded.signatures[export.SERVING_EXAMPLES](examples=tf.constant(examples))
    scores = served[export.SCORES_OUTPUT].numpy()
    classes = served[export.CLASSES_OUTPUT].numpy()
    assert scores.shape == (len(examples), 2) and classes.shape == (len(examples), 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-6)
    top = classes[np.arange(len(examples)), scores.argmax(axis=1)]
    np.testing.assert_array_equal(top, served[export.LABEL_OUTPUT].numpy())
    accuracy = np.mean(top == np.array([label for _, label in eval_rows], dtype=bytes))
    assert accuracy >= 0.85


def test_mixed_precision_training_exports_a_float32_model(binary_mixed_precision_run):
    fn_args, history = binary_mixed_precision_run
    assert history["path"] == {phases.HEAD_PHASE: phases.PATH_CACHED}
    assert history["feature_engine"] == FEATURE_ENGINE_TENSORFLOW  # float16 compute
    assert "feature_engine_rates" not in history  # nothing to measure against
    checkpoint = tf.train.load_checkpoint(
        os.path.join(fn_args.serving_model_dir, "variables", "variables"))
    dtypes = set(checkpoint.get_variable_to_dtype_map().values())
    assert tf.float16 not in dtypes and tf.float32 in dtypes
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # left as it was


def test_binary_head_needs_exactly_two_classes():
    config = TrainingConfig(head=HeadConfig(binary=True))
    classifier.check_classes(config, ["cat", "dog"])
    with pytest.raises(ValueError, match=r"head.binary needs exactly two classes.*'bird'"):
        classifier.check_classes(config, ["cat", "dog", "bird"])
    with pytest.raises(ValueError, match="at least two classes"):
        classifier.check_classes(TrainingConfig(), ["cat"])


def test_class_weights():
    counts = np.array([30, 10])
    assert phases.class_weights(TrainingConfig(), ["a", "b"], counts) is None
    auto = phases.class_weights(TrainingConfig(class_weights="auto"), ["a", "b"], counts)
    assert auto == pytest.approx({0: 40 / 60, 1: 40 / 20})
    given = phases.class_weights(TrainingConfig(class_weights={"b": 3.0}), ["a", "b"], counts)
    assert given == {0: 1.0, 1: 3.0}
    with pytest.raises(ValueError, match=r"class_weights names \['c'\]"):
        phases.class_weights(TrainingConfig(class_weights={"c": 2.0}), ["a", "b"], counts)


def test_head_shapes():
    flat = classifier.build_head((3, 3, 8), 4, TrainingConfig(
        head=HeadConfig(pooling="flatten", dense_units=(16, 8))))
    assert flat.get_layer("pool").output_shape == (None, 72)
    assert [layer.name for layer in flat.get_layer("head_top").layers if "dense" in layer.name] == [
        "dense_0", "dense_1"]
    vector = classifier.build_head((12,), 3, TrainingConfig())
    assert isinstance(vector.get_layer("pool"), tf.keras.layers.Identity)
    assert vector.output_shape == (None, 3)


@pytest.fixture(scope="module")
def export_settings_run(tmp_path_factory):
    """The Trainer with a small pixel budget and a TFLite model asked for.

    The cached features come from TensorFlow, asked for explicitly (so nothing
    is measured): this run is about the export.
    """
    config = dataclasses.replace(
        EXACT, epochs=1, fine_tuning=FineTuningConfig(), feature_engine=FEATURE_ENGINE_TENSORFLOW,
        export=ExportConfig(max_image_pixels=2_000, tflite=True),
    )
    fn_args = trainer_testing.fn_args_for(config, tmp_path_factory.mktemp("export"))
    return fn_args, config, model.train_and_export(fn_args)


def test_an_explicit_feature_engine_measures_nothing(export_settings_run):
    _, _, history = export_settings_run
    assert history["feature_engine"] == FEATURE_ENGINE_TENSORFLOW
    assert "feature_engine_rates" not in history


def test_the_pixel_budget_setting_reaches_the_serving_signature(export_settings_run):
    fn_args, _, _ = export_settings_run
    small = trainer_testing.colour_rows({"red": 1}, size=40)[0][0]  # 1600 pixels
    large = trainer_testing.colour_rows({"red": 1}, size=64)[0][0]  # 4096 pixels
    assert trainer_testing.serve(fn_args.serving_model_dir, [small])[
        export.LABEL_OUTPUT].shape == (1,)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_bytes\[1\]: image too large: 4096 pixels declared, over "
                             r"the pixel budget of 2000"):
        trainer_testing.serve(fn_args.serving_model_dir, [small, large])


def test_tflite_setting_writes_a_tflite_model_that_agrees(export_settings_run):
    fn_args, _, _ = export_settings_run
    tflite_path = os.path.join(
        fn_args.serving_model_dir, export.ASSETS_EXTRA, export.TFLITE_FILE)
    assert os.path.getsize(tflite_path) > 0
    _, _, eval_rows = trainer_testing.colour_examples()
    data = trainer_testing.transform_output_for(
        EXACT.backbone, EXACT.input_size, trainer_testing.colour_examples()[1])
    difference = export.tflite_max_difference(
        fn_args.serving_model_dir, tft.TFTransformOutput(data),
        [image for image, _ in eval_rows])
    assert difference <= export.DEFAULT_TFLITE_TOLERANCE


def test_the_exported_model_records_its_training_settings(export_settings_run):
    fn_args, config, history = export_settings_run
    record = export.read_training_record(fn_args.serving_model_dir)
    assert TrainingConfig.from_dict(record["config"]) == config
    assert record["history"]["path"] == history["path"] == {phases.HEAD_PHASE: phases.PATH_CACHED}
