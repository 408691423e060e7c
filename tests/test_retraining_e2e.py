"""Retraining on spans, end to end with LocalDagRunner: push, cache, retrain, and the data gate."""

import json
import pathlib

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from pipeline import cli
from pipeline import pipeline as pipeline_def
from tests import mlmd_testing
from tests.conftest import write_class_folder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _store(workdir):
    return metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(workdir / "metadata.sqlite"))
    )


def _versions(workdir):
    model_dir = workdir / "serving" / "transferline"
    return sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")) if (
        model_dir.exists()) else []


def _inputs(store, node_id, key):
    """Ids of the artifacts the node's latest execution read under `key`."""
    context = store.get_context_by_type_and_name("node", f"{mlmd_testing.PIPELINE_NAME}.{node_id}")
    execution = max(store.get_executions_by_context(context.id), key=lambda e: e.id)
    events = store.get_events_by_execution_ids([execution.id])
    return [e.artifact_id for e in events
            if e.type == metadata_store_pb2.Event.INPUT and e.path.steps[0].key == key]


def _trainer_history(records):
    """The latest Trainer run's history.json, and the Model artifact it wrote."""
    trainer = records[pipeline_def.TRAINER]
    (model_run,) = trainer.outputs["model_run"]
    (model,) = trainer.outputs["model"]
    return json.loads((pathlib.Path(model_run.uri) / "history.json").read_text()), model.uri


def test_spans_push_once_retrain_against_the_baseline_and_gate_bad_data(tmp_path, capsys):
    data, workdir = tmp_path / "images", tmp_path / "work"
    write_class_folder(data / "span-1", per_class=12)
    # Tiny: 32 px images; epochs are cheap (the head trains on cached backbone features).
    # Top-2 accuracy: the default top-5 needs more than three classes.
    argv = [
        "run", "--data", str(data), "--workdir", str(workdir), "--epochs", "20",
        "--image-size", "32", "--min-accuracy", "0.5", "--max-accuracy-drop", "0.5",
        "--accuracy-top-k", "2",
    ]

    # Span 1: trained, blessed, pushed.
    assert cli.main(argv) == 0
    first = json.loads((workdir / "run_summary.json").read_text())
    assert first["span"] == 1 and first["blessed"] and first["pushed_this_run"]
    assert first["data_gate"] == {"compared_span": None, "label_drift": None}
    (version_1,) = _versions(workdir)
    history, _ = _trainer_history(mlmd_testing.latest_run(workdir))
    assert history["warm_start"] == {"from": None, "used": False,
                                     "reason": "no model was being served when this data arrived"}
    assert first["baseline"] == {"served_version": None, "from": None,
                                 "note": "no model was being served: absolute bounds only"}

    # The same data again: served from cache, nothing new pushed.
    assert cli.main(argv) == 0
    records = mlmd_testing.latest_run(workdir)
    for node in (pipeline_def.EXAMPLE_GEN, pipeline_def.DATA_GATE, pipeline_def.TRAINER):
        assert records[node].state == "CACHED", node
    assert _versions(workdir) == [version_1]
    assert "already serves" in capsys.readouterr().out

    # Span 2 lands: ingested alone, checked against span 1, trained on the window of
    # both spans, evaluated against the blessed span-1 model, pushed only if blessed.
    write_class_folder(data / "span-2", per_class=12, seed_offset=50_000)
    assert cli.main([*argv, "--span-window", "2"]) == 0
    second = json.loads((workdir / "run_summary.json").read_text())
    store = _store(workdir)
    records = mlmd_testing.latest_run(workdir)
    assert records[pipeline_def.TRAINER].state == "COMPLETE"
    assert second["span"] == 2 and second["data_gate"]["compared_span"] == 1
    assert second["data_gate"]["label_drift"] == pytest.approx(0.0, abs=0.2)
    assert len(_inputs(store, pipeline_def.TRAINER, "examples")) == 2  # spans 1 and 2
    assert len(_inputs(store, pipeline_def.EVALUATOR, "baseline_model")) == 1
    # The Trainer started from the served span-1 version's head (same backbone, head
    # and classes), copied by the WarmStartModel node; the Evaluator compared with it.
    history, _ = _trainer_history(records)
    (warm_start_source,) = records[pipeline_def.WARM_START_MODEL].outputs["model"]
    assert warm_start_source.custom_properties["served_version"].int_value == int(version_1)
    assert history["warm_start"] == {"from": warm_start_source.uri, "used": True,
                                     "backbone": False}
    assert second["baseline"] == {
        "served_version": int(version_1),
        "from": str(workdir / "serving" / "transferline" / version_1)}
    assert second["pushed_this_run"] == second["blessed"]
    assert len(_versions(workdir)) == (2 if second["blessed"] else 1)
    versions = _versions(workdir)
    capsys.readouterr()

    # Span 3 lacks a class: the data gate stops the run before training, in one line.
    write_class_folder(data / "span-3", per_class=12, seed_offset=90_000)
    for path in (data / "span-3" / "blue").iterdir():
        path.unlink()
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: data gate stopped the run: ")
    assert "class 'blue' of span 2 has no examples in span 3" in err
    records = mlmd_testing.latest_run(workdir)
    assert records[pipeline_def.DATA_GATE].state == "FAILED"
    assert pipeline_def.TRAINER not in records
    assert _versions(workdir) == versions
