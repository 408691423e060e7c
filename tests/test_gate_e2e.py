"""End to end: a worse second model is not blessed and not pushed; the first keeps serving."""

import json
import os
import shutil

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from components import serving_pusher
from pipeline import cli
from tests.conftest import CLASS_COLOURS, write_class_folder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _presplit(root, seed_offset=0):
    write_class_folder(root / "train", per_class=12, seed_offset=seed_offset)
    write_class_folder(root / "val", per_class=6, seed_offset=seed_offset + 500)
    return root


def _with_labels_permuted(good, root):
    """The same images, but every training image filed under the next class's folder."""
    shutil.copytree(good / "val", root / "val")
    classes = sorted(CLASS_COLOURS)
    for label, wrong in zip(classes, classes[1:] + classes[:1], strict=True):
        shutil.copytree(good / "train" / label, root / "train" / wrong)
    return root


def _summary(workdir):
    return json.loads((workdir / "run_summary.json").read_text())


def test_a_worse_model_is_not_blessed_and_the_previous_version_stays(tmp_path, capsys):
    good = _presplit(tmp_path / "good")
    worse = _with_labels_permuted(good, tmp_path / "worse")
    workdir = tmp_path / "work"
    settings = [
        "--workdir", str(workdir), "--epochs", "20", "--learning-rate", "0.02",
        "--image-size", "32", "--min-accuracy", "0", "--max-accuracy-drop", "0.05",
        "--accuracy-top-k", "2",
    ]

    assert cli.main(["run", "--data", str(good), *settings]) == 0
    first = _summary(workdir)
    assert first["blessed"] and first["pushed_this_run"]
    assert first["gate"]["baseline"] is False
    assert [(c["metric"], c["kind"], c["passed"]) for c in first["gate"]["checks"]] == [
        ("accuracy", "lower_bound", True)
    ]
    metrics = first["metrics"]
    assert metrics["examples"] == 18 and metrics["accuracy"] > 0.5
    assert metrics["top_k_accuracy"]["k"] == 2  # shown: 3 classes > k
    assert sorted(metrics["per_class"]) == sorted(CLASS_COLOURS)
    assert sum(map(sum, metrics["confusion_matrix"]["counts"])) == 18
    serving_model_dir = workdir / "serving" / "transferline"
    (version,) = serving_pusher.list_versions(str(serving_model_dir))
    assert (serving_model_dir / str(version) / serving_pusher.WARMUP_FILE).is_file()
    capsys.readouterr()

    # From scratch: warm-started from the good head, early stopping on the clean
    # validation split would keep that head, and the candidate would not be worse.
    assert cli.main(["run", "--data", str(worse), *settings, "--no-warm-start"]) == 0

    second = _summary(workdir)
    printed = capsys.readouterr().out
    assert second["blessed"] is False and second["pushed_model"] is None
    assert second["metrics"]["accuracy"] < metrics["accuracy"] - 0.05
    (change,) = [c for c in second["gate"]["checks"] if c["kind"] == "change"]
    assert change["passed"] is False
    assert change["baseline"] == pytest.approx(metrics["accuracy"])  # same eval images
    assert change["value"] == pytest.approx(second["metrics"]["accuracy"])
    assert "gate:       failed: accuracy on Overall" in printed
    assert "pushed:     nothing (model not blessed)" in printed
    assert serving_pusher.list_versions(str(serving_model_dir)) == [version]
    assert sorted(os.listdir(serving_model_dir)) == [".version-high-water", str(version)]
    config = text_format.Parse(
        (workdir / "serving" / serving_pusher.MODELS_CONFIG_FILE).read_text(),
        model_server_config_pb2.ModelServerConfig(),
    )
    assert [m.base_path for m in config.model_config_list.config] == [str(serving_model_dir)]
