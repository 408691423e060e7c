"""`transferline kfp-local PACKAGE`: a compiled package run here, task by task, in real processes.

The cheap tests run small hand-written packages whose containers are `python -c`
scripts (real subprocesses, kfp's own ExecutorInput and placeholders); the slow one
compiles the real pipeline for open-source KFP with local paths and runs every TFX
executor on a tiny generated folder, twice: a first model is pushed, and a second
one, trained on labels shuffled per image, is refused against the served version.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest
import yaml

from pipeline import cli
from tests.conftest import CLASS_COLOURS, encode, make_image, write_class_folder

# Writes the `word` parameter into its output artifact and says so in its executor output.
WRITE = """
import json, os, sys
executor = json.loads(sys.argv[1])
artifact = executor["outputs"]["artifacts"]["out"]["artifacts"][0]
os.makedirs(artifact["uri"])
with open(os.path.join(artifact["uri"], "word.txt"), "w") as f:
    f.write(executor["inputs"]["parameterValues"]["word"])
output = executor["outputs"]["outputFile"]
os.makedirs(os.path.dirname(output), exist_ok=True)
with open(output, "w") as f:
    json.dump({"artifacts": {"out": {"artifacts": [
        {"uri": artifact["uri"], "metadata": {"written_by": "Write"}}]}}}, f)
"""
# Copies what its input artifact holds, with that artifact's type and metadata.
READ = """
import json, os, sys
executor = json.loads(sys.argv[1])
given = executor["inputs"]["artifacts"]["words"]["artifacts"][0]
with open(os.path.join(given["uri"], "word.txt")) as f:
    word = f.read()
artifact = executor["outputs"]["artifacts"]["copy"]["artifacts"][0]
os.makedirs(artifact["uri"])
with open(os.path.join(artifact["uri"], "read.txt"), "w") as f:
    f.write(f"{word} {given['type']['schemaTitle']} {given['metadata']['written_by']}")
"""
TFX_V2 = "tfx.orchestration.kubeflow.v2"
FAIL = "import sys; print('working'); sys.exit('no such column: label')"


def _component(executor: str, inputs: dict | None = None, outputs: dict | None = None) -> dict:
    component = {"executorLabel": executor}
    if inputs:
        component["inputDefinitions"] = inputs
    if outputs:
        component["outputDefinitions"] = {"artifacts": {
            key: {"artifactType": {"schemaTitle": "system.Artifact", "schemaVersion": "0.0.1"}}
            for key in outputs}}
    return component


def _container(script: str) -> dict:
    return {"container": {"image": "unused", "command": ["python", "-c", script, "{{$}}"]}}


def _write_package(tmp_path, extra_tasks: dict | None = None, extra_components: dict | None = None,
                   extra_executors: dict | None = None) -> str:
    """Write -> Read (Read's input is Write's output), plus any extra tasks."""
    spec = {
        "pipelineInfo": {"name": "wiring"},
        "defaultPipelineRoot": str(tmp_path / "root"),
        "components": {
            "comp-write": _component("exec-write", {"parameters": {
                "word": {"parameterType": "STRING"}}}, ["out"]),
            "comp-read": _component("exec-read", {"artifacts": {"words": {"artifactType": {
                "schemaTitle": "system.Artifact", "schemaVersion": "0.0.1"}}}}, ["copy"]),
            "comp-fail": _component("exec-fail"),
            "comp-resolver": _component("exec-resolver", outputs=["model"]),
            **(extra_components or {}),
        },
        "deploymentSpec": {"executors": {
            "exec-write": _container(WRITE), "exec-read": _container(READ),
            "exec-fail": _container(FAIL),
            "exec-resolver": {"resolver": {"outputArtifactQueries": {}}},
            **(extra_executors or {}),
        }},
        "root": {"dag": {"tasks": {
            "Read": {"componentRef": {"name": "comp-read"}, "dependentTasks": ["Write"],
                     "inputs": {"artifacts": {"words": {"taskOutputArtifact": {
                         "producerTask": "Write", "outputArtifactKey": "out"}}}}},
            "Write": {"componentRef": {"name": "comp-write"}, "inputs": {"parameters": {
                "word": {"runtimeValue": {"constant": "hello"}}}}},
            **(extra_tasks or {}),
        }}},
    }
    path = tmp_path / "package.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _run_dir(tmp_path):
    (run,) = [p for p in (tmp_path / "root").iterdir() if p.name.startswith("wiring-")]
    return run


def test_outputs_wire_to_downstream_inputs_and_each_task_logs(tmp_path, capsys):
    assert cli.main(["kfp-local", _write_package(tmp_path)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" completed in ")[0] for line in lines] == [
        "task Write ...", "task Read ..."]
    assert all(line.endswith(" s") for line in lines)
    copied = _run_dir(tmp_path) / "Read" / "copy" / "read.txt"
    assert copied.read_text() == "hello system.Artifact Write"
    logs = tmp_path / "root" / "kfp-local-logs"
    assert sorted(os.listdir(logs)) == ["Read.log", "Write.log"]


def test_a_failed_task_stops_the_run_naming_it(tmp_path, capsys):
    fail = {"Fail": {"componentRef": {"name": "comp-fail"}, "dependentTasks": ["Write"]}}
    logs = tmp_path / "logs"
    package = _write_package(tmp_path, fail)

    assert cli.main(["kfp-local", package, "--logs", str(logs)]) == 1

    captured = capsys.readouterr()
    log = logs / "Fail.log"
    assert captured.out.splitlines() == [
        captured.out.splitlines()[0],
        f"task Fail ... failed (exit 1), log: {log}",
        "  no such column: label",
    ]
    assert captured.out.startswith("task Write ... completed in ")
    assert captured.err == f"error: task Fail failed; log: {log}\n"
    assert "working" in log.read_text()
    assert not (_run_dir(tmp_path) / "Read").exists()  # after Fail in the DAG's order


def test_an_importer_task_yields_its_uri_to_downstream_tasks(tmp_path, capsys):
    imported = tmp_path / "imported"
    imported.mkdir()
    (imported / "word.txt").write_text("imported")
    tasks = {
        "Import": {"componentRef": {"name": "comp-import"}},
        "ReadImported": {"componentRef": {"name": "comp-read"}, "inputs": {"artifacts": {
            "words": {"taskOutputArtifact": {"producerTask": "Import",
                                             "outputArtifactKey": "result"}}}}},
    }
    importer = {"importer": {
        "artifactUri": {"constant": str(imported)},
        "typeSchema": {"schemaTitle": "system.Model", "schemaVersion": "0.0.1"},
        "metadata": {"written_by": "hand"}}}

    package = _write_package(tmp_path, tasks, {"comp-import": _component(
        "exec-import", outputs=["result"])}, {"exec-import": importer})
    assert cli.main(["kfp-local", package]) == 0

    assert capsys.readouterr().out.startswith("task Import ... completed in ")
    copied = _run_dir(tmp_path) / "ReadImported" / "copy" / "read.txt"
    assert copied.read_text() == "imported system.Model hand"


def test_resolver_tasks_are_refused_before_anything_runs(tmp_path, capsys):
    resolvers = {name: {"componentRef": {"name": "comp-resolver"}}
                 for name in ("Baseline-model-resolver", "Baseline-model-blessing-resolver")}

    assert cli.main(["kfp-local", _write_package(tmp_path, resolvers)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: resolver tasks Baseline-model-blessing-resolver, Baseline-model-resolver do "
        "not run outside Vertex AI (open-source Kubeflow Pipelines runs none); recompile with "
        "`transferline compile`, whose baseline and warm start are plain tasks\n")
    assert not (tmp_path / "root").exists()


def test_a_parameter_that_is_not_a_constant_is_refused_before_anything_runs(tmp_path, capsys):
    write = {"Write": {"componentRef": {"name": "comp-write"}, "inputs": {"parameters": {
        "word": {"componentInputParameter": "word"}}}}}

    assert cli.main(["kfp-local", _write_package(tmp_path, write)]) == 2

    assert capsys.readouterr().err == (
        "error: task Write: parameter word is not a constant (componentInputParameter); "
        "kfp-local runs constants only\n")
    assert not (tmp_path / "root").exists()


def test_a_missing_package_is_one_line(tmp_path, capsys):
    missing = str(tmp_path / "nowhere.yaml")

    assert cli.main(["kfp-local", missing]) == 2

    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read pipeline package '{missing}': ")
    assert err.count("\n") == 1


# ------------------------------------------------------------------ the pipeline


def _shuffled_labels_folder(root, per_class: int, seed_offset: int):
    """New images of every class, each filed under a label drawn by a shuffle (balanced)."""
    labels = [label for label in CLASS_COLOURS for _ in range(per_class)]
    random.Random(7).shuffle(labels)
    for n, label in enumerate(labels):
        colour = list(CLASS_COLOURS.values())[n % len(CLASS_COLOURS)]
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{n:03d}.png").write_bytes(encode(make_image(colour, seed_offset + n)))


def _examples_in(split_dir) -> int:
    import tensorflow as tf

    files = [str(path) for path in split_dir.iterdir()]
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def _tasks_run(lines: list[str]) -> list[str]:
    assert all(" ... completed in " in line for line in lines), lines
    return [line.split(" ... ")[0].removeprefix("task ") for line in lines]


@pytest.mark.slow  # a subprocess per task, each importing TensorFlow and TFX
def test_a_compiled_package_pushes_then_refuses_a_regression_from_the_served_version(
        tmp_path, capsys):
    data = tmp_path / "images"
    write_class_folder(data / "train", per_class=6)
    write_class_folder(data / "val", per_class=6, seed_offset=500)
    package, root, serving = tmp_path / "p.yaml", tmp_path / "root", tmp_path / "serving"
    # For open-source KFP: no --no-baseline; a low absolute bound, so only the
    # no-regression check can refuse the second model.
    assert cli.main([
        "compile", "--output", str(package), "--image", "local", "--no-warm-start",
        "--pipeline-root", str(root), "--data", str(data), "--serving-dir", str(serving),
        "--layout", "presplit", "--epochs", "20", "--learning-rate", "0.02",
        "--image-size", "32", "--min-accuracy", "0", "--max-accuracy-drop", "0.05",
        "--accuracy-top-k", "2", "--beam-arg=--direct_num_workers=1",
    ]) == 0
    printed = capsys.readouterr().out
    assert "resolver" not in printed
    assert "accuracy overall change >= -0.0500 against the version being served" in printed

    # First run: nothing is served, so absolute bounds only; blessed and pushed.
    assert cli.main(["kfp-local", str(package)]) == 0
    assert _tasks_run(capsys.readouterr().out.splitlines()) == [
        "ImageFolderExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "DataGate",
        "Transform", "Embedder", "Trainer", "ServingBaseline", "Evaluator", "Pusher"]
    (first_run,) = [p for p in root.iterdir() if p.name.startswith("transferline-")]
    assert (first_run / "Evaluator" / "blessing" / "BLESSED").is_file()
    high_water, version = sorted(os.listdir(serving / "transferline"))
    assert (high_water, version.isdigit()) == (".version-high-water", True)
    assert (serving / "transferline" / version / "saved_model.pb").is_file()
    logs = root / "kfp-local-logs"
    assert "no model is being served under" in (logs / "ServingBaseline.log").read_text()
    log = (logs / "ImageFolderExampleGen.log").read_text()
    assert [line for line in log.splitlines() if line.startswith("$ ")] == [
        f"$ {sys.executable} -m {TFX_V2}.file_based_example_gen.driver ...",
        f"$ {sys.executable} -m {TFX_V2}.container.kubeflow_v2_run_executor ...",
    ]  # the pre-cache check first, on this Python
    assert _examples_in(first_run / "ImageFolderExampleGen" / "examples" / "Split-train") == 18

    # New training images, labels shuffled per image; the validation data stays clean.
    shutil.rmtree(data / "train")
    _shuffled_labels_folder(data / "train", per_class=7, seed_offset=70_000)
    time.sleep(1)  # the next run's folder is named by the local time, to the second
    assert cli.main(["kfp-local", str(package)]) == 0
    capsys.readouterr()
    (second_run,) = [p for p in root.iterdir()
                     if p.name.startswith("transferline-") and p != first_run]
    # The new images were read (the ExampleGen always runs: KFP's cache is off for it).
    assert _examples_in(second_run / "ImageFolderExampleGen" / "examples" / "Split-train") == 21
    assert f"version {version} from {serving / 'transferline' / version}" in (
        logs / "ServingBaseline.log").read_text()
    assert (second_run / "Evaluator" / "blessing" / "NOT_BLESSED").is_file()
    failures = _validation_failures(second_run / "Evaluator" / "evaluation")
    assert failures == [("accuracy", True)]  # the change against the served version
    assert sorted(os.listdir(serving / "transferline")) == [high_water, version]


def _validation_failures(evaluation_uri) -> list[tuple[str, bool]]:
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(str(evaluation_uri))
    return [(failure.metric_key.name, failure.metric_key.is_diff)
            for per_slice in result.metric_validations_per_slice
            for failure in per_slice.failures]
