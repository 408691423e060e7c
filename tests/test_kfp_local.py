"""`transferline kfp-local PACKAGE`: a compiled package run here, task by task, in real processes.

The cheap tests run small hand-written packages whose containers are `python -c`
scripts (real subprocesses, kfp's own ExecutorInput and placeholders); the slow one
compiles the real pipeline with --no-baseline and local paths and runs every TFX
executor on a tiny generated folder.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest
import yaml

from pipeline import cli
from tests.conftest import write_class_folder

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
        "not run outside Vertex AI (open-source Kubeflow Pipelines runs none); compile with "
        "--no-baseline\n")
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


@pytest.mark.slow  # a subprocess per task, each importing TensorFlow and TFX
def test_a_compiled_pipeline_runs_every_tfx_task_and_pushes(tmp_path, capsys):
    data = write_class_folder(tmp_path / "images", per_class=4)
    package, root, serving = tmp_path / "p.yaml", tmp_path / "root", tmp_path / "serving"
    assert cli.main([
        "compile", "--output", str(package), "--no-baseline", "--image", "local",
        "--pipeline-root", str(root), "--data", str(data), "--serving-dir", str(serving),
        "--epochs", "1", "--image-size", "32", "--min-accuracy", "0",
        "--beam-arg=--direct_num_workers=1",
    ]) == 0
    capsys.readouterr()

    assert cli.main(["kfp-local", str(package)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ... ")[0] for line in lines] == [
        "task ImageFolderExampleGen", "task StatisticsGen", "task SchemaGen",
        "task ExampleValidator", "task DataGate", "task Transform", "task Trainer",
        "task Evaluator", "task Pusher"]
    assert all(" ... completed in " in line for line in lines)
    (run,) = [p for p in root.iterdir() if p.name.startswith("transferline-")]
    examples = run / "ImageFolderExampleGen" / "examples"
    assert sorted(os.listdir(examples / "Split-train")) == ["data_tfrecord-00000-of-00001.gz"]
    assert sorted(os.listdir(examples / "Split-eval")) == ["data_tfrecord-00000-of-00001.gz"]
    high_water, version = sorted(os.listdir(serving / "transferline"))
    assert (high_water, version.isdigit()) == (".version-high-water", True)
    assert (serving / "transferline" / version / "saved_model.pb").is_file()
    assert len(os.listdir(root / "kfp-local-logs")) == 9
    log = (root / "kfp-local-logs" / "ImageFolderExampleGen.log").read_text()
    assert [line for line in log.splitlines() if line.startswith("$ ")] == [
        f"$ {sys.executable} -m {TFX_V2}.file_based_example_gen.driver ...",
        f"$ {sys.executable} -m {TFX_V2}.container.kubeflow_v2_run_executor ...",
    ]  # the pre-cache check first, on this Python
    assert "Calculated fingerprint: split:all," in log
