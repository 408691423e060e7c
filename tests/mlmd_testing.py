"""ML Metadata read with its own API, independently of the product's run reader.

End-to-end tests assert what ML Metadata recorded through these few queries, so a
bug in `pipeline.reporting.runs` cannot hide itself by agreeing with itself.
"""

from __future__ import annotations

import dataclasses
import pathlib

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

PIPELINE_NAME = "transferline"  # literal on purpose: what the local runner must record
_STATE = metadata_store_pb2.Execution.State
_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)


@dataclasses.dataclass(frozen=True)
class Node:
    """A node's latest execution in a run: its state name and output artifacts by key."""

    state: str
    outputs: dict[str, list[metadata_store_pb2.Artifact]]


def store(workdir: pathlib.Path) -> metadata_store.MetadataStore:
    return metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(workdir / "metadata.sqlite")
        )
    )


def latest_run(workdir: pathlib.Path) -> dict[str, Node]:
    """Each node's latest execution in the newest `pipeline_run` context, by node id."""
    db = store(workdir)
    run = max(db.get_contexts_by_type("pipeline_run"), key=lambda c: c.create_time_since_epoch)
    in_run = {e.id: e for e in db.get_executions_by_context(run.id)}
    nodes = {}
    for context in db.get_contexts_by_type("node"):
        if not context.name.startswith(f"{PIPELINE_NAME}."):
            continue
        executions = [e for e in db.get_executions_by_context(context.id) if e.id in in_run]
        if not executions:
            continue
        execution = max(executions, key=lambda e: e.id)
        events = [e for e in db.get_events_by_execution_ids([execution.id])
                  if e.type in _OUTPUT_EVENTS]
        artifacts = {a.id: a for a in db.get_artifacts_by_id([e.artifact_id for e in events])}
        outputs: dict[str, list[metadata_store_pb2.Artifact]] = {}
        for event in events:
            outputs.setdefault(event.path.steps[0].key, []).append(artifacts[event.artifact_id])
        nodes[context.name[len(PIPELINE_NAME) + 1:]] = Node(
            _STATE.Name(execution.last_known_state), outputs
        )
    return nodes
