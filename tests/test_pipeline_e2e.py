"""End to end: `transferline run` with LocalDagRunner, real TFX, Beam, ML Metadata."""

import json
import os

import pytest
import tensorflow as tf

from components import serving_pusher
from pipeline import cli
from pipeline import pipeline as pipeline_def
from tests import mlmd_testing
from tests.conftest import CLASS_COLOURS, encode, make_image, write_class_folder
from trainer import export

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CACHED_ON_RERUN = (
    pipeline_def.EXAMPLE_GEN,
    pipeline_def.STATISTICS_GEN,
    pipeline_def.SCHEMA_GEN,
    pipeline_def.TRANSFORM,
    pipeline_def.TRAINER,
)


def _versions(serving_model_dir):
    return sorted(p for p in serving_model_dir.iterdir() if not p.name.startswith("."))


def test_run_pushes_a_serving_model_once_and_reruns_from_cache(tmp_path, capsys):
    data = write_class_folder(tmp_path / "images", per_class=16)
    (data / "red" / "empty.jpg").write_bytes(b"")
    (data / "green" / "notes.txt").write_text("not an image")
    workdir = tmp_path / "work"
    argv = [
        "run", "--data", str(data), "--workdir", str(workdir),
        "--epochs", "4", "--image-size", "64", "--min-accuracy", "0.6",
    ]

    assert cli.main(argv) == 0

    printed = capsys.readouterr().out
    summary = json.loads((workdir / "run_summary.json").read_text())
    assert summary["examples"]["train"] + summary["examples"]["eval"] == 48
    assert summary["examples"]["eval"] > 0
    assert summary["classes"] == sorted(CLASS_COLOURS)
    assert summary["skipped"] == [
        {"path": "red/empty.jpg", "reason": summary["skipped"][0]["reason"]}
    ]
    assert "empty" in summary["skipped"][0]["reason"]
    assert summary["files"]["seen"] == 50 and summary["files"]["ignored"] == 1
    assert summary["metrics"]["accuracy"] >= 0.6
    assert summary["blessed"] is True
    for node_id in pipeline_def.NODE_IDS:
        assert f"{node_id} started" in printed and f"{node_id} finished" in printed
    assert "transferline predict --model" in printed

    records = mlmd_testing.latest_run(workdir)
    assert set(records) == set(pipeline_def.NODE_IDS)
    assert {record.state for record in records.values()} == {"COMPLETE"}

    serving_model_dir = workdir / "serving" / "transferline"
    (version,) = _versions(serving_model_dir)
    assert summary["pushed_model"] == str(version)
    serve = tf.saved_model.load(str(version)).signatures[export.SERVING_DEFAULT]
    red = encode(make_image(CLASS_COLOURS["red"], seed=999_999), "JPEG")
    blue = encode(make_image(CLASS_COLOURS["blue"], seed=999_998), "PNG")
    outputs = serve(**{export.IMAGE_BYTES_INPUT: tf.constant([red, blue])})
    assert [label.decode() for label in outputs[export.LABEL_OUTPUT].numpy()] == ["red", "blue"]
    assert outputs[export.SCORES_OUTPUT].shape == (2, 3)
    card = (version / serving_pusher.MODEL_CARD_FILE).read_text()
    assert card.startswith(f"# Model card: transferline, version {version.name}\n")
    assert f"Eval-split accuracy: **{summary['metrics']['accuracy']:.4f}**" in card
    assert "| Classes | 3: " in card and "| Input size | 64 x 64 RGB |" in card
    assert "| accuracy (value) | >= 0.6000 |" in card and "| pass |" in card

    # Unchanged data: everything up to the model is served from cache, no second push.
    assert cli.main(argv) == 0
    rerun = mlmd_testing.latest_run(workdir)
    for node_id in CACHED_ON_RERUN:
        assert rerun[node_id].state == "CACHED", node_id
    assert _versions(serving_model_dir) == [version]
    summary_again = json.loads((workdir / "run_summary.json").read_text())
    assert summary_again["pushed_model"] == str(version)
    assert summary_again["pushed_this_run"] is False
    assert "already serves" in capsys.readouterr().out


def test_predict_command_labels_images_from_a_pushed_model(tmp_path, capsys):
    data = write_class_folder(tmp_path / "images", per_class=10)
    workdir = tmp_path / "work"
    assert cli.main([
        "run", "--data", str(data), "--workdir", str(workdir), "--backbone", "mobilenet_v2",
        "--weights", "none", "--epochs", "2", "--image-size", "32", "--min-accuracy", "0",
    ]) == 0
    capsys.readouterr()
    image = tmp_path / "green.png"
    image.write_bytes(encode(make_image(CLASS_COLOURS["green"], seed=5)))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"<html>not found</html>")

    status = cli.main([
        "predict", "--model", str(workdir / "serving" / "transferline"),
        str(image), str(broken), "--json",
    ])

    results = json.loads(capsys.readouterr().out)
    assert status == 1  # one file failed; the other was still classified
    assert [r["path"] for r in results] == [str(image), str(broken)]
    assert results[0]["label"] in CLASS_COLOURS and 0 <= results[0]["score"] <= 1
    assert results[1]["label"] is None and results[1]["error"]
    assert os.path.isfile(workdir / "run_summary.json")
