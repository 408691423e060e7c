"""`transferline kfp-local PACKAGE`: runs a compiled Kubeflow package on this machine.

A pre-flight check ("does my compiled package run, with my data and my settings?")
and our test harness. The tasks run in the DAG's order, each as a subprocess of the
current Python environment running the task's own container command and arguments
(what the image installs). Each task's ExecutorInput is built with kfp 2.5.0's own
local-execution code (`kfp.local.executor_input_utils`, `kfp.local.placeholder_utils`);
only its input artifacts are filled here, from the upstream tasks' executor outputs
along the package's `taskOutputArtifact` wiring (kfp.local refuses input artifacts
and container components without Docker). A container's `preCacheCheck` (TFX's
ExampleGen driver) runs first, as Kubeflow Pipelines runs it; importer tasks yield
their artifact from its URI.

Not emulated: KFP's cache, resource requests and limits, retries, pod isolation
(every task shares this machine's environment and file system). Resolver tasks
(open-source KFP runs none; `transferline compile` emits none) are refused.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import json_format
from kfp.local import executor_input_utils, placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline.kubeflow_compile import CompiledPackage
from pipeline.kubeflow_settings import is_object_store

EXECUTOR_OUTPUT = "executor_output.json"
LOGS_FOLDER = "kfp-local-logs"
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PackageNotRunnable(ValueError):
    """The package holds a task this runner cannot run (one line naming it)."""


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """How one task ended."""

    name: str
    exit_code: int
    seconds: float
    log: str
    last_error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def task_order(package: CompiledPackage) -> list[str]:
    """Task names in the DAG's order (dependencies first, ties by name).

    Raises:
        PackageNotRunnable: A resolver or an unknown executor kind, an input that is
            neither a constant nor another task's output, or a cycle.
    """
    tasks = package.tasks()
    resolvers = sorted(name for name, executor in tasks.items() if "resolver" in executor)
    if resolvers:
        raise PackageNotRunnable(
            f"resolver tasks {', '.join(resolvers)} do not run outside Vertex AI "
            "(open-source Kubeflow Pipelines runs none); recompile with `transferline compile`, "
            "whose baseline and warm start are plain tasks")
    unknown = sorted(name for name, executor in tasks.items()
                     if not {"container", "importer"} & set(executor))
    if unknown:
        raise PackageNotRunnable(f"tasks {', '.join(unknown)} have an executor kind "
                                 "kfp-local cannot run (only container and importer)")
    for name, task in _dag_tasks(package).items():
        _check_inputs(name, task, tasks[name])
    upstream = {name: _upstream(task) for name, task in _dag_tasks(package).items()}
    order: list[str] = []
    while len(order) < len(upstream):
        ready = sorted(n for n, up in upstream.items() if n not in order and up <= set(order))
        if not ready:
            raise PackageNotRunnable("the package's tasks depend on each other in a cycle")
        order.append(ready[0])
    return order


def _check_inputs(name: str, task: Mapping[str, Any], executor: Mapping[str, Any]) -> None:
    inputs = task.get("inputs", {})
    for key, source in inputs.get("parameters", {}).items():
        if "constant" not in source.get("runtimeValue", {}):
            raise PackageNotRunnable(f"task {name}: parameter {key} is not a constant "
                                     f"({', '.join(source)}); kfp-local runs constants only")
    for key, source in inputs.get("artifacts", {}).items():
        if "taskOutputArtifact" not in source:
            raise PackageNotRunnable(f"task {name}: input artifact {key} is not another task's "
                                     f"output ({', '.join(source)}); kfp-local cannot wire it")
    if "importer" in executor and "constant" not in executor["importer"].get("artifactUri", {}):
        raise PackageNotRunnable(f"task {name}: the importer has no constant artifactUri")


def run_package(package: CompiledPackage, logs_dir: str | None = None,
                report: Callable[[str], None] = print) -> list[TaskResult]:
    """Runs every task in order; stops at the first that fails.

    Args:
        package: From `pipeline.kubeflow_compile.load_package`.
        logs_dir: One `<task>.log` per task (default: `<pipeline root>/kfp-local-logs`,
            or `./kfp-local-logs` when the root is an object store).
        report: Called with one line per task as it ends.

    Returns:
        The results of the tasks that ran, the failed one last.

    Raises:
        PackageNotRunnable: See `task_order`, or the package has no pipeline root.
    """
    order = task_order(package)
    if not package.pipeline_root:
        raise PackageNotRunnable("the package names no pipeline root (compile with "
                                 "--pipeline-root)")
    logs_dir = logs_dir or default_logs_dir(package.pipeline_root)
    os.makedirs(logs_dir, exist_ok=True)
    run_name = executor_input_utils.get_local_pipeline_resource_name(package.name)
    outputs: dict[str, dict[str, Any]] = {}
    results = []
    for name in order:
        result = _run_task(package, name, run_name, outputs, os.path.join(logs_dir, f"{name}.log"))
        results.append(result)
        report(_describe(result))
        if not result.ok:
            break
    return results


def default_logs_dir(pipeline_root: str) -> str:
    if is_object_store(pipeline_root):
        return os.path.abspath(LOGS_FOLDER)
    return os.path.join(pipeline_root, LOGS_FOLDER)


def _describe(result: TaskResult) -> str:
    if result.ok:
        return f"task {result.name} ... completed in {result.seconds:.1f} s"
    line = f"task {result.name} ... failed (exit {result.exit_code}), log: {result.log}"
    return f"{line}\n  {result.last_error}" if result.last_error else line


# ------------------------------------------------------------------- one task


def _run_task(package: CompiledPackage, name: str, run_name: str,
              outputs: dict[str, dict[str, Any]], log: str) -> TaskResult:
    """Runs one task; records its output artifacts (by key) in `outputs[name]`."""
    task = _dag_tasks(package)[name]
    component = package.spec["components"][task["componentRef"]["name"]]
    executor = package.tasks()[name]
    started = time.monotonic()
    task_root = executor_input_utils.construct_local_task_root(
        package.pipeline_root, run_name, name)
    if "importer" in executor:
        outputs[name] = _import(executor["importer"], component)
        _write_text(log, f"imported {executor['importer']}\n")
        return TaskResult(name, 0, time.monotonic() - started, log)
    executor_input = _executor_input(task, component, task_root, outputs)
    code = _run_container(executor["container"], executor_input, run_name, name,
                          package.pipeline_root, log)
    if code:
        return TaskResult(name, code, time.monotonic() - started, log, _last_error(log))
    declared = executor_input["outputs"].get("artifacts", {})
    produced = _read_executor_output(executor_input["outputs"]["outputFile"])
    outputs[name] = {key: _merge(artifacts, produced.get(key))
                     for key, artifacts in declared.items()}
    return TaskResult(name, 0, time.monotonic() - started, log)


def _run_container(container: Mapping[str, Any], executor_input: dict[str, Any], run_name: str,
                   task_name: str, pipeline_root: str, log: str) -> int:
    """The pre-cache check (if any), then the main command; the first non-zero exit code."""
    steps = [container["lifecycle"]["preCacheCheck"]] if "lifecycle" in container else []
    with open(log, "w") as log_file:
        for step in [*steps, container]:
            command = _command(step, executor_input, run_name, task_name, pipeline_root)
            log_file.write(f"$ {' '.join(command[:3])} ...\n")
            log_file.flush()
            try:
                code = subprocess.call(command, stdout=log_file, stderr=subprocess.STDOUT,
                                       env=_task_env())
            except OSError as error:  # e.g. a command this machine does not have
                log_file.write(f"cannot start {command[0]!r}: {error.strerror}\n")
                code = 127
            if code:
                return code
    return 0


def _executor_input(task: Mapping[str, Any], component: Mapping[str, Any], task_root: str,
                    outputs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """kfp's ExecutorInput for the task's constants, with upstream artifacts filled in."""
    spec = json_format.ParseDict(component, pipeline_spec_pb2.ComponentSpec())
    without_artifacts = copy.deepcopy(spec)
    without_artifacts.input_definitions.ClearField("artifacts")
    message = executor_input_utils.construct_executor_input(
        without_artifacts, _constant_parameters(task), task_root)
    executor_input = executor_input_utils.executor_input_to_dict(message, spec)
    artifacts = {key: _upstream_artifacts(outputs, source["taskOutputArtifact"])
                 for key, source in task.get("inputs", {}).get("artifacts", {}).items()}
    if artifacts:
        executor_input.setdefault("inputs", {})["artifacts"] = artifacts
    return executor_input


def _upstream_artifacts(outputs: Mapping[str, Mapping[str, Any]], wiring: Mapping[str, str]
                        ) -> dict[str, Any]:
    """The ArtifactList an upstream task produced under one output key."""
    return outputs[wiring["producerTask"]][wiring["outputArtifactKey"]]


def _constant_parameters(task: Mapping[str, Any]) -> dict[str, Any]:
    return {key: source["runtimeValue"]["constant"]  # checked by task_order
            for key, source in task.get("inputs", {}).get("parameters", {}).items()}


def _command(step: Mapping[str, Any], executor_input: dict[str, Any], run_name: str,
             task_name: str, pipeline_root: str) -> list[str]:
    """The step's command and arguments, placeholders replaced, on this Python."""
    command = placeholder_utils.replace_placeholders(
        [*step.get("command", []), *step.get("args", [])], executor_input, run_name,
        task_name, pipeline_root)
    if command and command[0] in ("python", "python3"):
        command[0] = sys.executable  # what the image's `python` is here
    return command


def _task_env() -> dict[str, str]:
    """This environment, with this project first on the path (as the image installs it)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PROJECT_ROOT, path]))}


def _import(importer: Mapping[str, Any], component: Mapping[str, Any]) -> dict[str, Any]:
    """An importer's output: one artifact at its constant URI."""
    artifact = {"name": "", "type": importer["typeSchema"],
                "uri": importer["artifactUri"]["constant"],
                "metadata": importer.get("metadata", {})}
    keys = component.get("outputDefinitions", {}).get("artifacts", {}) or {"artifact": None}
    return {key: {"artifacts": [artifact]} for key in keys}


def _merge(declared: Mapping[str, Any], produced: Mapping[str, Any] | None) -> dict[str, Any]:
    """The executor's artifacts (TFX writes no type) over the declared ones (with type)."""
    if not produced or not produced.get("artifacts"):
        return dict(declared)
    base = declared["artifacts"][0]
    return {"artifacts": [{**base, **artifact} for artifact in produced["artifacts"]]}


def _read_executor_output(path: str) -> dict[str, Any]:
    if is_object_store(path):
        import tensorflow as tf  # only object stores need it

        if not tf.io.gfile.exists(path):
            return {}
        text = tf.io.gfile.GFile(path).read()
    elif os.path.exists(path):
        with open(path) as f:
            text = f.read()
    else:
        return {}
    return json.loads(text).get("artifacts", {})


def _last_error(log: str) -> str:
    with open(log, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else ""


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _dag_tasks(package: CompiledPackage) -> dict[str, dict[str, Any]]:
    return package.spec["root"]["dag"]["tasks"]


def _upstream(task: Mapping[str, Any]) -> set[str]:
    producers = {source["taskOutputArtifact"]["producerTask"]
                 for source in task.get("inputs", {}).get("artifacts", {}).values()
                 if "taskOutputArtifact" in source}
    return set(task.get("dependentTasks", [])) | producers
