"""Pipeline runs as ML Metadata recorded them: the one reader of runs, for every consumer.

A `RunRecord` is one pipeline run (its `pipeline_run` context) with each node's
latest execution in it, their states, properties, and input and output
artifacts. The run summary and `transferline report` both read runs here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components import serving_pusher

_PIPELINE_CONTEXT = "pipeline"
_RUN_CONTEXT = "pipeline_run"
_NODE_CONTEXT = "node"
METADATA_FILE = "metadata.sqlite"
"""The local runner's ML Metadata database, in the work directory."""
ABANDONED_PROPERTY = "abandoned"
"""An execution's custom property: when and why a later run found it left active."""
ABANDONED = "ABANDONED"
"""The state shown for an execution marked abandoned (ML Metadata's state: CANCELED)."""


class ReportError(ValueError):
    """The report cannot be made (one line says why)."""


# ------------------------------------------------------------------ ML Metadata


@dataclasses.dataclass(frozen=True)
class ArtifactRef:
    """An artifact as an execution saw it: the event's key, id, type and URI."""

    key: str
    id: int
    type: str
    uri: str
    properties: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ExecutionRef:
    """One node's execution in the run.

    `state` is ML Metadata's state name, except for an execution a later run
    found left NEW or RUNNING by a process that died: that one is ABANDONED,
    and `properties["abandoned"]` says when and why.
    """

    id: int
    node_id: str
    type: str
    state: str
    started_ms: int
    finished_ms: int
    properties: Mapping[str, Any]
    inputs: tuple[ArtifactRef, ...]
    outputs: tuple[ArtifactRef, ...]


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """A pipeline run: its ML Metadata context and its executions, in the order they ran."""

    pipeline_name: str
    name: str
    context_id: int
    created_ms: int
    executions: tuple[ExecutionRef, ...]

    def execution(self, node_id: str) -> ExecutionRef | None:
        return next((e for e in self.executions if e.node_id == node_id), None)

    def output(self, node_id: str, key: str) -> ArtifactRef | None:
        execution = self.execution(node_id)
        return next((a for a in execution.outputs if a.key == key), None) if execution else None

    def input(self, node_id: str, key: str) -> ArtifactRef | None:
        execution = self.execution(node_id)
        return next((a for a in execution.inputs if a.key == key), None) if execution else None


def open_store(workdir: str) -> metadata_store.MetadataStore:
    """The workdir's ML Metadata, opened read-only.

    Raises:
        ReportError: The workdir holds no `metadata.sqlite`.
    """
    from tfx import v1 as tfx

    path = os.path.join(workdir, METADATA_FILE)
    if not os.path.isfile(path):
        raise ReportError(
            f"no ML Metadata at {path}: run `transferline run --workdir {workdir}` first"
        )
    config = tfx.orchestration.metadata.sqlite_metadata_connection_config(path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def list_runs(
    store: metadata_store.MetadataStore, pipeline_name: str
) -> list[metadata_store_pb2.Context]:
    """The pipeline's run contexts, oldest first."""
    pipeline = store.get_context_by_type_and_name(_PIPELINE_CONTEXT, pipeline_name)
    if pipeline is None:
        return []
    runs = [
        c for c in store.get_children_contexts_by_context(pipeline.id) if c.type == _RUN_CONTEXT
    ]
    if not runs:  # Runs recorded without a parent link: find them through their executions.
        by_id = {}
        for execution in store.get_executions_by_context(pipeline.id):
            for context in store.get_contexts_by_execution(execution.id):
                if context.type == _RUN_CONTEXT:
                    by_id[context.id] = context
        runs = list(by_id.values())
    return sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id))


def find_run(
    store: metadata_store.MetadataStore, pipeline_name: str, run_name: str | None = None
) -> RunRecord:
    """The run named `run_name`, or the latest run.

    Raises:
        ReportError: The pipeline has no runs, or none named `run_name`.
    """
    runs = list_runs(store, pipeline_name)
    if not runs:
        raise ReportError(f"ML Metadata records no run of pipeline {pipeline_name!r}")
    if run_name is None:
        return read_run(store, pipeline_name, runs[-1])
    named = [run for run in runs if run.name == run_name]
    if not named:
        recent = ", ".join(run.name for run in runs[-5:])
        raise ReportError(
            f"no run named {run_name!r} of pipeline {pipeline_name!r}; latest: {recent}"
        )
    return read_run(store, pipeline_name, named[0])


def read_run(
    store: metadata_store.MetadataStore, pipeline_name: str, run: metadata_store_pb2.Context
) -> RunRecord:
    """Every node's latest execution in `run`, with its input and output artifacts."""
    latest: dict[str, metadata_store_pb2.Execution] = {}
    for execution in store.get_executions_by_context(run.id):
        node_id = _node_id(store, execution.id, pipeline_name)
        if node_id is not None and (node_id not in latest or execution.id > latest[node_id].id):
            latest[node_id] = execution
    events = store.get_events_by_execution_ids([e.id for e in latest.values()])
    artifacts = {a.id: a for a in store.get_artifacts_by_id(list({e.artifact_id for e in events}))}
    executions = []
    for node_id, execution in sorted(latest.items(), key=lambda item: item[1].id):
        own = [e for e in events if e.execution_id == execution.id and e.artifact_id in artifacts]
        inputs = _artifact_refs(
            own,
            artifacts,
            (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT),
        )
        outputs = _artifact_refs(
            own,
            artifacts,
            (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT),
        )
        executions.append(
            ExecutionRef(
                id=execution.id,
                node_id=node_id,
                type=execution.type,
                state=_state(execution),
                started_ms=execution.create_time_since_epoch,
                finished_ms=execution.last_update_time_since_epoch,
                properties=_properties(execution),
                inputs=inputs,
                outputs=outputs,
            )
        )
    return RunRecord(
        pipeline_name=pipeline_name,
        name=run.name,
        context_id=run.id,
        created_ms=run.create_time_since_epoch,
        executions=tuple(executions),
    )


def _state(execution: metadata_store_pb2.Execution) -> str:
    if ABANDONED_PROPERTY in execution.custom_properties:
        return ABANDONED
    return metadata_store_pb2.Execution.State.Name(execution.last_known_state)


def _node_id(
    store: metadata_store.MetadataStore, execution_id: int, pipeline_name: str
) -> str | None:
    prefix = f"{pipeline_name}."
    for context in store.get_contexts_by_execution(execution_id):
        if context.type == _NODE_CONTEXT and context.name.startswith(prefix):
            return context.name[len(prefix) :]
    return None


def _artifact_refs(
    events: list[metadata_store_pb2.Event],
    artifacts: Mapping[int, metadata_store_pb2.Artifact],
    types: tuple[int, ...],
) -> tuple[ArtifactRef, ...]:
    refs = []
    for event in events:
        if event.type not in types:
            continue
        artifact = artifacts[event.artifact_id]
        key = event.path.steps[0].key if event.path.steps else ""
        refs.append(
            ArtifactRef(key, artifact.id, artifact.type, artifact.uri, _properties(artifact))
        )
    return tuple(sorted(refs, key=lambda ref: (ref.key, ref.id)))


def _properties(node: metadata_store_pb2.Artifact | metadata_store_pb2.Execution) -> dict[str, Any]:
    values = {}
    for name, value in [*node.properties.items(), *node.custom_properties.items()]:
        kind = value.WhichOneof("value")
        if kind in ("int_value", "double_value", "string_value", "bool_value"):
            values[name] = getattr(value, kind)
        elif kind is not None:
            values[name] = json_format.MessageToDict(getattr(value, kind))
    return values


def pushed_runs(store: metadata_store.MetadataStore, pipeline_name: str) -> dict[str, str]:
    """Every version the pipeline pushed, with the run that pushed it: {version dir: run name}."""
    runs = {run.id: run for run in list_runs(store, pipeline_name)}
    pushed = {}
    for artifact in store.get_artifacts_by_type("PushedModel"):
        props = _properties(artifact)
        destination = serving_pusher.serving_version_dir(props)
        if not serving_pusher.pushed_now(props) or not destination:
            continue
        for event in store.get_events_by_artifact_ids([artifact.id]):
            if event.type != metadata_store_pb2.Event.OUTPUT:
                continue
            for context in store.get_contexts_by_execution(event.execution_id):
                if context.id in runs:
                    pushed[destination] = context.name
    return pushed


