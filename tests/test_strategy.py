"""Devices and precision; the MirroredStrategy path on two logical CPU devices.

Logical devices must be configured before TensorFlow initialises its devices,
which the test process has long done: the strategy run happens in a fresh
Python process.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest
import tensorflow as tf

from tests import trainer_testing
from trainer import strategy

MIRRORED_RUN = textwrap.dedent("""
    import dataclasses, json, os, pathlib, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from tests import trainer_testing
    from trainer import local_inputs, model, strategy
    from trainer.config import FineTuningConfig, HeadConfig, TrainingConfig

    mirrored = strategy.make_strategy(["/cpu:0", "/cpu:1"])
    config = TrainingConfig(
        backbone="efficientnet_lite0", weights="imagenet", image_size=32, epochs=3,
        batch_size=8, learning_rate=0.01, head=HeadConfig(dense_units=(8,)),
        fine_tuning=FineTuningConfig(unfreeze_layers=3, learning_rate=1e-3, epochs=1))
    # The parent's examples and Transform output: Beam need not run again in here.
    workdir, examples_uri, transform_dir = pathlib.Path(sys.argv[1]), *sys.argv[2:4]
    examples = trainer_testing.examples_at(examples_uri)
    fn_args = local_inputs.make_fn_args(examples, transform_dir, config, workdir / "cached")
    history = model.train_and_export(fn_args, strategy=mirrored)
    eval_rows = json.loads(pathlib.Path(sys.argv[4]).read_text())
    served = trainer_testing.serve(fn_args.serving_model_dir,
                                   [bytes.fromhex(i) for i, _ in eval_rows])
    accuracy = sum(p.decode() == label for p, (_, label) in
                   zip(served["label"].numpy(), eval_rows)) / len(eval_rows)
    plain_args = local_inputs.make_fn_args(
        examples, transform_dir, dataclasses.replace(
            config, cache_features=False, epochs=1, fine_tuning=FineTuningConfig()),
        workdir / "plain")
    plain = model.train_and_export(plain_args, strategy=mirrored)
    print("RESULT", json.dumps({
        "replicas": mirrored.num_replicas_in_sync, "type": type(mirrored).__name__,
        "path": history["path"], "plain_path": plain["path"], "accuracy": accuracy,
    }))
""")


def test_training_runs_mirrored_across_two_devices(tmp_path):
    examples, train_rows, eval_rows = trainer_testing.colour_examples()
    transform_dir = trainer_testing.transform_output_for("efficientnet_lite0", 32, train_rows)
    eval_file = tmp_path / "eval_rows.json"
    eval_file.write_text(json.dumps([(image.hex(), label) for image, label in eval_rows]))
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED_RUN, str(tmp_path), examples.uri, transform_dir,
         str(eval_file)],
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


# -------------------------------------------------------------- cluster (TF_CONFIG)

TWO_WORKERS = json.dumps({
    "cluster": {"worker": ["localhost:1111", "localhost:2222"]},
    "task": {"type": "worker", "index": 1},
})


@pytest.mark.parametrize(
    ("tf_config", "local_devices", "expected"),
    [
        (None, 0, strategy.DEFAULT),
        ("", 1, strategy.DEFAULT),
        (None, 2, strategy.MIRRORED),
        (TWO_WORKERS, 0, strategy.MULTI_WORKER),
        (TWO_WORKERS, 4, strategy.MULTI_WORKER),
        (json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                     "task": {"type": "chief", "index": 0}}), 0, strategy.MULTI_WORKER),
        # One worker (and an evaluator, which does not train): local devices decide.
        (json.dumps({"cluster": {"worker": ["a:1"], "evaluator": ["b:1"]},
                     "task": {"type": "worker", "index": 0}}), 2, strategy.MIRRORED),
        (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker"}}), 0,
         strategy.DEFAULT),
    ],
)
def test_strategy_follows_tf_config_then_local_devices(tf_config, local_devices, expected):
    cluster = strategy.parse_tf_config(tf_config)
    assert strategy.choose_strategy(cluster, local_devices) == expected


@pytest.mark.parametrize(
    ("tf_config", "chief"),
    [
        (TWO_WORKERS, False),
        (TWO_WORKERS.replace('"index": 1', '"index": 0'), True),
        (json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                     "task": {"type": "worker", "index": 0}}), False),
        (json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                     "task": {"type": "chief", "index": 0}}), True),
        (None, True),
    ],
)
def test_only_the_chief_writes(tf_config, chief):
    assert strategy.parse_tf_config(tf_config).is_chief is chief


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        ("{cluster: 1}", "TF_CONFIG is not valid JSON"),
        ("[1, 2]", "TF_CONFIG must be a JSON object"),
        ('{"cluster": {"worker": "a:1"}}', "TF_CONFIG 'cluster' must map task types"),
        ('{"cluster": {"worker": ["a:1"]}, "task": "worker"}', "TF_CONFIG 'task' must be"),
        ('{"cluster": {"worker": ["a:1", "b:1"], "ps": ["c:1"]}, "task": {"type": "worker"}}',
         "TF_CONFIG names parameter servers"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": -1}}',
         "TF_CONFIG task index"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
         "TF_CONFIG task type 'chief' is not in the cluster"),
    ],
)
def test_malformed_tf_config_is_refused_by_name(tf_config, message):
    with pytest.raises(ValueError, match=message):
        strategy.parse_tf_config(tf_config)
    with pytest.raises(ValueError, match=message):
        strategy.make_strategy([], tf_config=tf_config)


MULTI_WORKER_RUN = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    from tfx.components.trainer.fn_args_utils import FnArgs
    from trainer import strategy

    multi = strategy.make_strategy([])  # TF_CONFIG from the environment
    with multi.scope():
        model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
        model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 4)).astype("float32")
    model.fit(features, features[:, :2] * 2, batch_size=16, epochs=2, verbose=0)
    fn_args = FnArgs(serving_model_dir="/model/Format-Serving", model_run_dir="/model_run")
    mine = strategy.for_this_worker(fn_args, multi)
    print("RESULT", json.dumps({
        "multi_worker": isinstance(multi, tf.distribute.MultiWorkerMirroredStrategy),
        "replicas": multi.num_replicas_in_sync,
        "chief": strategy.is_chief(multi), "serving_model_dir": mine.serving_model_dir,
        "weights": [w.tolist() for w in model.get_weights()],
    }))
""")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_in_step_with_multi_worker_mirrored_strategy():
    """Two real worker processes on localhost ports, wired by TF_CONFIG alone."""
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, strategy.TF_CONFIG_ENV: json.dumps(tf_config),
               "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", MULTI_WORKER_RUN], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=120)
            lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
            assert process.returncode == 0 and lines, err[-3000:]
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
    finally:
        for process in processes:
            process.kill()
    assert [(r["multi_worker"], r["replicas"]) for r in results] == [(True, 2)] * 2
    assert [r["chief"] for r in results] == [True, False]
    assert results[0]["serving_model_dir"] == "/model/Format-Serving"
    assert results[1]["serving_model_dir"].startswith(tempfile.gettempdir())
    # Gradients are all-reduced: both workers end with the same, trained weights.
    assert results[0]["weights"] == results[1]["weights"]
