"""Runs the pipeline on this machine: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from ml_metadata import metadata_store
from tfx import v1 as tfx

from components.config import GateConfig, IngestConfig
from pipeline.names import PIPELINE_NAME
from pipeline.pipeline import create_pipeline
from pipeline.reporting import run_summary, runs
from trainer.config import TrainingConfig

DEFAULT_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


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

    Returns:
        The run summary (see `pipeline.reporting.run_summary.build_summary`).
    """
    layout = WorkdirLayout(os.path.abspath(workdir))
    os.makedirs(layout.workdir, exist_ok=True)
    metadata_config = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        layout.metadata_path
    )
    tfx.orchestration.LocalDagRunner().run(
        create_pipeline(
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
    )
    store = metadata_store.MetadataStore(metadata_config)
    summary = run_summary.build_summary(runs.find_run(store, PIPELINE_NAME))
    with open(layout.summary_path, "w") as f:
        json.dump(summary, f, indent=2)
    return summary
