"""Devices and precision; the MirroredStrategy path on two logical CPU devices.

Logical devices must be configured before TensorFlow initialises its devices,
which the test process has long done: the strategy run happens in a fresh
Python process.
"""

import json
import subprocess
import sys
import textwrap

import tensorflow as tf

from trainer import strategy

MIRRORED_RUN = textwrap.dedent("""
    import dataclasses, json, os, pathlib, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from tests import trainer_testing
    from trainer import model, strategy
    from trainer.config import FineTuningConfig, HeadConfig, TrainingConfig

    mirrored = strategy.make_strategy(["/cpu:0", "/cpu:1"])
    config = TrainingConfig(
        backbone="efficientnet_lite0", weights="imagenet", image_size=32, epochs=3,
        batch_size=8, learning_rate=0.01, head=HeadConfig(dense_units=(8,)),
        fine_tuning=FineTuningConfig(unfreeze_layers=3, learning_rate=1e-3, epochs=1))
    workdir = pathlib.Path(sys.argv[1])
    fn_args = trainer_testing.fn_args_for(config, workdir / "cached")
    history = model.train_and_export(fn_args, strategy=mirrored)
    _, _, eval_rows = trainer_testing.colour_examples()
    served = trainer_testing.serve(fn_args.serving_model_dir, [i for i, _ in eval_rows])
    accuracy = sum(p.decode() == label for p, (_, label) in
                   zip(served["label"].numpy(), eval_rows)) / len(eval_rows)
    plain_args = trainer_testing.fn_args_for(
        dataclasses.replace(config, cache_features=False, epochs=1,
                            fine_tuning=FineTuningConfig()), workdir / "plain")
    plain = model.train_and_export(plain_args, strategy=mirrored)
    print("RESULT", json.dumps({
        "replicas": mirrored.num_replicas_in_sync, "type": type(mirrored).__name__,
        "path": history["path"], "plain_path": plain["path"], "accuracy": accuracy,
    }))
""")


def test_training_runs_mirrored_across_two_devices(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED_RUN, str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert (result["type"], result["replicas"]) == ("MirroredStrategy", 2)
    assert result["path"] == {"head": "cached_features", "fine_tuning": "cached_features"}
    assert result["plain_path"] == {"head": "end_to_end"}
    assert result["accuracy"] >= 0.75


def test_one_device_or_none_takes_the_default_strategy():
    assert strategy.make_strategy([]) is tf.distribute.get_strategy()
    assert strategy.make_strategy(["/cpu:0"]).num_replicas_in_sync == 1
    # This machine has no GPU.
    assert strategy.make_strategy().num_replicas_in_sync == 1


def test_mixed_precision_is_for_gpus_unless_asked():
    assert strategy.use_mixed_precision("auto") == bool(tf.config.list_physical_devices("GPU"))
    assert strategy.use_mixed_precision("on") and not strategy.use_mixed_precision("off")


def test_precision_policy_is_restored():
    before = tf.keras.mixed_precision.global_policy().name
    with strategy.precision_policy(True):
        assert tf.keras.mixed_precision.global_policy().name == "mixed_float16"
        assert tf.keras.layers.Dense(2).compute_dtype == "float16"
    assert tf.keras.mixed_precision.global_policy().name == before
