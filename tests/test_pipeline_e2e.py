"""End to end: `transferline run` with LocalDagRunner, real TFX, Beam, ML Metadata
(the session's shared run, tests/shared_run.py), and `predict` on what it pushed."""

import json
import os

import pytest
import tensorflow as tf

from components import serving_pusher
from pipeline import cli
from pipeline import pipeline as pipeline_def
from tests import mlmd_testing
from tests.conftest import CLASS_COLOURS, EXPECTED_NODE_IDS, encode, make_image
from trainer import export

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CACHED_ON_RERUN = (
    pipeline_def.EXAMPLE_GEN,
    pipeline_def.WARM_START_MODEL,
    pipeline_def.STATISTICS_GEN,
    pipeline_def.SCHEMA_GEN,
    pipeline_def.TRANSFORM,
    pipeline_def.EMBEDDER,
    pipeline_def.TUNER,
    pipeline_def.TRAINER,
)


def _versions(serving_model_dir):
    return sorted(p for p in serving_model_dir.iterdir() if not p.name.startswith("."))


def test_run_pushes_a_serving_model_once_and_reruns_from_cache(shared_run):
    first, workdir = shared_run.first, shared_run.workdir
    summary, printed = first.summary, first.printed

    assert summary["examples"] == {"train": 18, "eval": 7}  # 6 and 2 per class, one planted
    assert summary["classes"] == sorted(CLASS_COLOURS)
    assert summary["skipped"] == [
        {"path": "train/red/empty.jpg", "reason": summary["skipped"][0]["reason"]}
    ]
    assert "empty" in summary["skipped"][0]["reason"]
    assert summary["files"]["seen"] == 27 and summary["files"]["ignored"] == 1
    assert summary["metrics"]["accuracy"] >= 0.6
    assert summary["blessed"] is True
    for node_id in pipeline_def.NODE_IDS:
        assert f"{node_id} started" in printed and f"{node_id} finished" in printed
    assert "transferline predict --model" in printed

    assert set(first.nodes) == set(EXPECTED_NODE_IDS)
    assert {node.state for node in first.nodes.values()} == {"COMPLETE"}

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
    assert "| Classes | 3: " in card and "| Input size | 32 x 32 RGB |" in card
    assert "| accuracy (value) | >= 0.6000 |" in card and "| pass |" in card

    # Unchanged data: everything up to the model is served from cache, no second push.
    rerun = shared_run.rerun
    for node_id in CACHED_ON_RERUN:
        assert rerun.nodes[node_id].state == "CACHED", node_id
    assert _versions(serving_model_dir) == [version]
    assert rerun.summary["pushed_model"] == str(version)
    assert rerun.summary["pushed_this_run"] is False
    assert "already serves" in rerun.printed
    # The first run had nothing to compare with; the re-run compares with what serves
    # now (the baseline is read on every run, cache or not).
    assert summary["baseline"] == {"served_version": None, "from": None,
                                   "note": "no model was being served: absolute bounds only"}
    assert "  baseline:   none: no model was being served: absolute bounds only" in printed
    assert rerun.nodes[pipeline_def.SERVING_BASELINE].state == "COMPLETE"
    assert rerun.summary["baseline"] == {"served_version": int(version.name),
                                         "from": str(version)}

    # Each run's summary is its own run's, named by the run id ML Metadata recorded.
    run_contexts = mlmd_testing.store(workdir).get_contexts_by_type("pipeline_run")
    assert [c.name for c in sorted(run_contexts, key=lambda c: c.id)] == [
        summary["run_id"], rerun.summary["run_id"],
    ]
    assert summary["run_id"] != rerun.summary["run_id"]


def test_predict_command_labels_images_from_a_pushed_model(shared_run, tmp_path, capsys):
    workdir = shared_run.workdir
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


def test_the_head_trained_on_the_embedders_vectors(shared_run):
    """The Embedder wrote one vector per example of each split; the Trainer's head read them."""
    nodes = shared_run.first.nodes
    (embeddings,) = nodes[pipeline_def.EMBEDDER].outputs["embeddings"]
    counts = {
        split: sum(1 for _ in tf.data.TFRecordDataset(
            tf.io.gfile.glob(os.path.join(embeddings.uri, f"Split-{split}", "*")),
            compression_type="GZIP"))
        for split in ("train", "eval")
    }
    assert counts == shared_run.first.summary["examples"] == {"train": 18, "eval": 7}
    (model_run,) = nodes[pipeline_def.TRAINER].outputs["model_run"]
    with open(os.path.join(model_run.uri, "history.json")) as f:
        history = json.load(f)
    assert history["head_inputs"] == "embedder"
    # The head search ran on the same vectors; the Trainer took its best settings.
    (best,) = nodes[pipeline_def.TUNER].outputs["best_hyperparameters"]
    with open(os.path.join(best.uri, "best_hyperparameters.txt")) as f:
        best_values = json.load(f)["values"]
    assert 1 <= history["tuning"]["trials"] <= 3
    assert history["tuning"]["values"] == best_values
    (model,) = nodes[pipeline_def.TRAINER].outputs["model"]
    config = export.read_training_record(os.path.join(model.uri, "Format-Serving"))["config"]
    assert config["learning_rate"] == best_values["learning_rate"]
    assert config["head"]["dropout"] == best_values["dropout"]
