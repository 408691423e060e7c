"""Runs the pipeline on this machine: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.dsl.compiler import constants as compiler_constants
from tfx.orchestration.portable import runtime_parameter_utils, tfx_runner

from components.config import GateConfig, IngestConfig
from pipeline import workdir_lock
from pipeline.names import PIPELINE_NAME
from pipeline.pipeline import ALWAYS_RUN_IDS, create_pipeline
from pipeline.reporting import run_summary, runs
from trainer.config import TrainingConfig

DEFAULT_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
_ACTIVE_STATES = (metadata_store_pb2.Execution.NEW, metadata_store_pb2.Execution.RUNNING)


@dataclasses.dataclass(frozen=True)
class WorkdirLayout:
    """Where a local run keeps everything, all under one work directory."""

    workdir: str

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.workdir, "pipeline")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.workdir, runs.METADATA_FILE)

    @property
    def serving_dir(self) -> str:
        return os.path.join(self.workdir, "serving")

    @property
    def summary_path(self) -> str:
        return os.path.join(self.workdir, run_summary.SUMMARY_FILE)

    def serving_model_dir(self, model_name: str) -> str:
        return os.path.join(self.serving_dir, model_name)


def run_local(
    *,
    data_root: str,
    workdir: str,
    model_name: str,
    training: TrainingConfig = TrainingConfig(),
    ingest: IngestConfig = IngestConfig(),
    gate: GateConfig = GateConfig(),
    beam_pipeline_args: Sequence[str] = DEFAULT_BEAM_ARGS,
) -> dict[str, Any]:
    """Runs the pipeline with LocalDagRunner and writes `<workdir>/run_summary.json`.

    The whole run holds the workdir's lock, so the summary is this run's own:
    read from ML Metadata by the run id this process gave it.

    Returns:
        The run summary (see `pipeline.reporting.run_summary.build_summary`):
        this run's, named by its id under `run_id`.

    Raises:
        WorkdirBusyError: Another run holds the workdir (nothing ran).
    """
    layout = WorkdirLayout(os.path.abspath(workdir))
    os.makedirs(layout.workdir, exist_ok=True)
    metadata_config = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        layout.metadata_path
    )
    with start_run(layout.workdir, metadata_config) as started:
        pipeline = create_pipeline(
            pipeline_name=PIPELINE_NAME,
            pipeline_root=layout.pipeline_root,
            data_root=os.path.abspath(data_root),
            serving_model_dir=layout.serving_model_dir(model_name),
            training=training,
            ingest=ingest,
            gate=gate,
            metadata_connection_config=metadata_config,
            beam_pipeline_args=beam_pipeline_args,
        )
        run_pipeline(pipeline, started.run_id, always_run=ALWAYS_RUN_IDS)
        run = runs.find_run(started.store, PIPELINE_NAME, started.run_id)
        summary = run_summary.build_summary(run)
        with open(layout.summary_path, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


@dataclasses.dataclass(frozen=True)
class StartedRun:
    """A run about to start in a workdir this process holds."""

    run_id: str
    store: metadata_store.MetadataStore
    abandoned: tuple[int, ...]
    """The executions found left active by a dead process, now marked abandoned."""


@contextlib.contextmanager
def start_run(
    workdir: str, metadata_config: metadata_store_pb2.ConnectionConfig
) -> Iterator[StartedRun]:
    """Holds `workdir` for the block, marks what dead runs left active, names the new run.

    Raises:
        WorkdirBusyError: Another process holds the workdir.
    """
    with workdir_lock.hold(workdir):
        store = metadata_store.MetadataStore(metadata_config)
        run_id = new_run_id()
        yield StartedRun(run_id, store, tuple(mark_abandoned(store, run_id)))


def new_run_id() -> str:
    """A run id in LocalDagRunner's own format: the local time, ISO 8601."""
    return datetime.datetime.now().isoformat()


def run_pipeline(pipeline: tfx.dsl.Pipeline, run_id: str, always_run: Sequence[str] = ()
                 ) -> None:
    """Runs `pipeline` with LocalDagRunner as the run `run_id` (its `pipeline_run` context).

    `LocalDagRunner.run` would pick the id itself; the IR is compiled here as it
    compiles it, the id substituted first (`run_with_ir` then finds nothing left
    to substitute), so the caller knows which run is its own. The nodes in
    `always_run` get their cache switched off in the IR (TFX's per-node caching
    option, which the DSL sets only pipeline-wide), so they execute every time.
    """
    ir = tfx_runner._make_pipeline_proto(pipeline)  # what LocalDagRunner.run compiles
    for node in ir.nodes:
        if node.pipeline_node.node_info.id in always_run:
            node.pipeline_node.execution_options.caching_options.enable_cache = False
    runtime_parameter_utils.substitute_runtime_parameter(
        ir, {compiler_constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id}
    )
    tfx.orchestration.LocalDagRunner().run_with_ir(ir)


def mark_abandoned(store: metadata_store.MetadataStore, run_id: str) -> list[int]:
    """Marks every execution still NEW or RUNNING as CANCELED and `abandoned`.

    Call it holding the workdir's lock: no other process is running, so an
    execution still active was left by a process that died (kill -9, a crash, a
    power cut). CANCELED is the state TFX's orchestrator gives a node it stopped
    (`post_execution_utils`: FAILED is for an executor's error); like FAILED it
    is never a cache hit, so LocalDagRunner runs the node again.

    Returns:
        The ids of the executions marked.
    """
    active = [
        execution
        for execution in store.get_executions()
        if execution.last_known_state in _ACTIVE_STATES
    ]
    found_at = datetime.datetime.now().isoformat(timespec="seconds")
    for execution in active:
        state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
        execution.custom_properties[runs.ABANDONED_PROPERTY].string_value = (
            f"found {state} at {found_at} by run {run_id}: its process had ended"
        )
        execution.last_known_state = metadata_store_pb2.Execution.CANCELED
    if active:
        store.put_executions(active)
    return [execution.id for execution in active]
