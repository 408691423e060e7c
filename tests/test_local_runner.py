"""One run per workdir: the lock, its release on kill -9, and what a killed run leaves.

The lock is held by real processes (this one, or a child killed with SIGKILL);
the killed run is a real LocalDagRunner run of a two-step pipeline whose second
step hangs, so ML Metadata holds what TFX itself writes for a step that never
finished. ML Metadata is read back with its own API (`tests.mlmd_testing`).
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.types.standard_artifacts import String

from pipeline import local_runner, workdir_lock
from pipeline.reporting import report_data, runs
from tests import mlmd_testing

_REPO = pathlib.Path(__file__).resolve().parents[1]
_HANG_MARKER = "TRANSFERLINE_TEST_HANG_MARKER"  # Consume hangs after touching this file
_TINY_PIPELINE = "tiny"
_STATE = metadata_store_pb2.Execution.State


@tfx.dsl.components.component
def Produce(word: tfx.dsl.components.OutputArtifact[String]) -> None:  # noqa: N802
    pathlib.Path(word.uri).write_text("hello")


@tfx.dsl.components.component
def Consume(  # noqa: N802
    word: tfx.dsl.components.InputArtifact[String],
    echo: tfx.dsl.components.OutputArtifact[String],
) -> None:
    marker = os.environ.get(_HANG_MARKER)
    if marker:
        pathlib.Path(marker).touch()
        time.sleep(600)
    pathlib.Path(echo.uri).write_text(pathlib.Path(word.uri).read_text())


def _tiny_pipeline(workdir: str) -> tfx.dsl.Pipeline:
    produce = Produce().with_id("Produce")
    consume = Consume(word=produce.outputs["word"]).with_id("Consume")
    return tfx.dsl.Pipeline(
        pipeline_name=_TINY_PIPELINE,
        pipeline_root=os.path.join(workdir, "pipeline"),
        components=[produce, consume],
        enable_cache=True,
        metadata_connection_config=_metadata_config(workdir),
    )


def _metadata_config(workdir: str) -> metadata_store_pb2.ConnectionConfig:
    return tfx.orchestration.metadata.sqlite_metadata_connection_config(
        os.path.join(workdir, "metadata.sqlite")
    )


def run_tiny(workdir: str, always_run: tuple[str, ...] = ()) -> local_runner.StartedRun:
    """Runs the tiny pipeline as `run_local` runs ours."""
    with local_runner.start_run(workdir, _metadata_config(workdir)) as started:
        local_runner.run_pipeline(_tiny_pipeline(workdir), started.run_id, always_run)
    return started


def _states(workdir: str, run_id: str) -> dict[str, str]:
    store = metadata_store.MetadataStore(_metadata_config(workdir))
    run = runs.find_run(store, _TINY_PIPELINE, run_id)
    return {execution.node_id: execution.state for execution in run.executions}


def test_an_always_run_node_executes_on_every_run_and_the_rest_is_cached(tmp_path):
    first = run_tiny(str(tmp_path))
    cached = run_tiny(str(tmp_path))
    forced = run_tiny(str(tmp_path), always_run=("Produce",))

    assert _states(str(tmp_path), first.run_id) == {"Produce": "COMPLETE", "Consume": "COMPLETE"}
    assert _states(str(tmp_path), cached.run_id) == {"Produce": "CACHED", "Consume": "CACHED"}
    # Produce ran again, so Consume got a new input and ran too.
    assert _states(str(tmp_path), forced.run_id) == {"Produce": "COMPLETE", "Consume": "COMPLETE"}


def _child(code: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=_REPO,
        env={**os.environ, "PYTHONPATH": str(_REPO), **env},
        stdout=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: pathlib.Path, child: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert child.poll() is None, f"child exited with {child.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _kill(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL


def test_a_held_workdir_is_refused_with_the_holders_pid_host_and_start(tmp_path):
    with workdir_lock.hold(str(tmp_path)) as holder:
        assert holder.pid == os.getpid()
        with pytest.raises(workdir_lock.WorkdirBusyError) as refused:
            with workdir_lock.hold(str(tmp_path)):
                pass
    assert str(refused.value) == (
        f"workdir {tmp_path} is in use by transferline run "
        f"(pid {os.getpid()} on {socket.gethostname()}, since {holder.since})"
    )
    with workdir_lock.hold(str(tmp_path)):  # released at the end of the block
        pass


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    held = tmp_path / "held"
    child = _child(
        "import pathlib, sys, time\n"
        "from pipeline import workdir_lock\n"
        f"with workdir_lock.hold({str(tmp_path)!r}):\n"
        f"    pathlib.Path({str(held)!r}).touch()\n"
        "    time.sleep(600)\n"
    )
    try:
        _wait_for(held, child, timeout_s=30)
        with pytest.raises(workdir_lock.WorkdirBusyError, match=f"\\(pid {child.pid} on "):
            with workdir_lock.hold(str(tmp_path)):
                pass
    finally:
        _kill(child)
    with workdir_lock.hold(str(tmp_path)) as holder:
        assert holder.pid == os.getpid()


@pytest.mark.slow
def test_run_command_exits_2_naming_the_holder_before_anything_runs(image_folder, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    with workdir_lock.hold(str(workdir)) as holder:
        finished = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run",
             "--data", str(image_folder), "--workdir", str(workdir)],
            cwd=_REPO, env={**os.environ, "PYTHONPATH": str(_REPO)},
            capture_output=True, text=True, timeout=300,
        )
    assert finished.returncode == 2, finished.stderr
    errors = [line for line in finished.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: workdir {workdir} is in use by transferline run "
        f"(pid {os.getpid()} on {socket.gethostname()}, since {holder.since})"
    ]
    assert sorted(p.name for p in workdir.iterdir()) == ["run.lock"]  # no ML Metadata, no run


@pytest.mark.slow
def test_a_killed_run_is_marked_abandoned_and_the_next_run_redoes_its_step(tmp_path):
    workdir, hanging = tmp_path / "work", tmp_path / "consume_started"
    workdir.mkdir()
    child = _child(
        "from tests.test_local_runner import run_tiny\n"
        f"run_tiny({str(workdir)!r})\n",
        **{_HANG_MARKER: str(hanging)},
    )
    try:
        _wait_for(hanging, child)
    finally:
        _kill(child)
    store = mlmd_testing.store(workdir)
    (killed_run,) = store.get_contexts_by_type("pipeline_run")
    left = {_node(store, e): e for e in store.get_executions_by_context(killed_run.id)}
    assert {node: e.last_known_state for node, e in left.items()} == {
        "Produce": _STATE.COMPLETE, "Consume": _STATE.RUNNING,
    }

    started = run_tiny(str(workdir))  # the killed child's lock is gone
    run_id = started.run_id
    assert started.abandoned == (left["Consume"].id,)

    (abandoned,) = store.get_executions_by_id([left["Consume"].id])
    assert abandoned.last_known_state == _STATE.CANCELED
    reason = abandoned.custom_properties["abandoned"].string_value
    assert reason.startswith("found RUNNING at ") and f" by run {run_id}: " in reason
    (completed,) = store.get_executions_by_id([left["Produce"].id])
    assert completed.last_known_state == _STATE.COMPLETE
    assert "abandoned" not in completed.custom_properties
    new_run = store.get_context_by_type_and_name("pipeline_run", run_id)
    redone = {_node(store, e): e for e in store.get_executions_by_context(new_run.id)}
    assert {node: e.last_known_state for node, e in redone.items()} == {
        "Produce": _STATE.CACHED, "Consume": _STATE.COMPLETE,
    }

    old = runs.find_run(store, _TINY_PIPELINE, killed_run.name)  # named, though not the latest
    assert [(e.node_id, e.state) for e in old.executions] == [
        ("Produce", "COMPLETE"), ("Consume", "ABANDONED"),
    ]
    assert old.execution("Consume").properties["abandoned"] == reason
    report = report_data.gather_report_data(
        str(workdir), pipeline_name=_TINY_PIPELINE, run_name=killed_run.name
    )
    assert f"Consume (execution {abandoned.id}) abandoned: {reason}" in report.notes
    latest = runs.find_run(store, _TINY_PIPELINE)
    assert latest.name == run_id
    assert [(e.node_id, e.state) for e in latest.executions] == [
        ("Produce", "CACHED"), ("Consume", "COMPLETE"),
    ]


def _node(store, execution: metadata_store_pb2.Execution) -> str:
    (node,) = [
        c.name for c in store.get_contexts_by_execution(execution.id) if c.type == "node"
    ]
    return node.removeprefix(f"{_TINY_PIPELINE}.")
