"""Compiles the pipeline for Kubeflow: KFP v2 packages, written and read back.

Compiling builds the same `create_pipeline(...)` as the local runner and hands it to
TFX's KubeflowV2DagRunner; only paths, resources and the runner differ. TensorFlow
and TFX are imported by `compile_pipeline` alone: reading a package (`load_package`,
which `pipeline.kfp_client` uploads) does not load them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components.config import GateConfig, IngestConfig
from pipeline.kubeflow_settings import LAYOUT_AUTO, KubeflowConfig
from trainer.errors import one_line

if TYPE_CHECKING:
    from trainer.config import TrainingConfig  # imports TensorFlow

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec


def resource_specs(config: KubeflowConfig, node_ids: Sequence[str], trainer_id: str
                   ) -> dict[str, ResourceSpec]:
    """Per-node resources: limits and GPUs for the Trainer, requests for the rest."""
    specs = {
        node_id: ResourceSpec(cpu_request=config.node_cpu, memory_request=config.node_memory_gb)
        for node_id in node_ids
    }
    trainer = ResourceSpec(cpu_limit=config.trainer_cpu, memory_limit=config.trainer_memory_gb)
    if config.trainer_gpus:
        trainer.accelerator.type = config.trainer_gpu_type
        trainer.accelerator.count = config.trainer_gpus
    specs[trainer_id] = trainer
    return specs


def compile_pipeline(
    output: str,
    *,
    config: KubeflowConfig,
    training: TrainingConfig | None = None,
    ingest: IngestConfig | None = None,
    gate: GateConfig | None = None,
) -> dict[str, Any]:
    """Compiles the pipeline to a KFP v2 package.

    Args:
        output: `.json` writes TFX's PipelineJob (the PipelineSpec plus the pipeline
            root; Vertex AI takes it as is); `.yaml`/`.yml` writes the bare
            PipelineSpec that Kubeflow Pipelines uploads.
        config: Cluster settings.
        training: Backbone, head and training settings.
        ingest: Ingestion settings.
        gate: Blessing thresholds.
        (None takes a settings class's defaults; the defaults are not instances in
        the signature because TrainingConfig imports TensorFlow.)

    Returns:
        The PipelineJob as a dict (`pipelineSpec` inside).

    The baseline and the warm-start source are ServedModel tasks reading the
    serving directory (`components.served_model`), plain containers that every
    Kubeflow Pipelines runs. KFP's cache is switched off for the tasks in
    `UNCACHED_TASKS` (see there). A rolling window of spans
    (`ingest.span_window` > 1) is refused: it is resolved from ML Metadata by an
    input-resolution function, which KFP v2 cannot run.

    Raises:
        ValueError: A setting is impossible, the data folder cannot be listed for
            layout "auto", or TFX cannot compile the pipeline for Kubeflow V2.
    """
    config.validate()
    ingest = ingest or IngestConfig()
    _require(ingest.span_window == 1,
             f"ingest.span_window {ingest.span_window} does not compile for Kubeflow: the "
             "window of spans is resolved from ML Metadata by an input-resolution function, "
             "which KubeflowV2DagRunner cannot compile; use span_window: 1 (the latest span)")
    _require(not config.pvc_mounts or _package_format(output) == "yaml",
             "pvc_mounts need a .yaml package: Kubeflow Pipelines reads them from its "
             "Kubernetes platform spec, which TFX's PipelineJob JSON cannot hold")
    import tensorflow as tf
    from tfx import v1 as tfx

    from pipeline import pipeline as transferline
    from trainer.config import TrainingConfig

    if config.layout == LAYOUT_AUTO and not tf.io.gfile.isdir(config.data_root):
        raise ValueError(
            f"data_root {config.data_root!r} is not a folder this machine can list; "
            "layout 'auto' needs it at compile time (or give the layout, e.g. 'classes')"
        )
    resources = resource_specs(config, transferline.NODE_IDS, transferline.TRAINER)
    tfx_pipeline = transferline.create_pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        data_root=config.data_root,
        serving_model_dir=config.serving_model_dir,
        training=training or TrainingConfig(),
        ingest=ingest,
        gate=gate or GateConfig(),
        beam_pipeline_args=config.beam_pipeline_args,
        platform_configs=resources,
        enable_cache=config.enable_cache,
        layout=None if config.layout == LAYOUT_AUTO else config.layout,
        baseline=config.baseline,
    )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=config.image,
            # Schema 2.1.0: what Kubeflow Pipelines 2.x accepts on upload.
            use_pipeline_spec_2_1=True,
        )
    )
    try:
        # Not written by TFX: the ExampleGen fix below must land in the file.
        job = runner.run(tfx_pipeline, write_out=False)
    except (TypeError, ValueError, NotImplementedError) as error:
        raise ValueError(
            f"TFX's KubeflowV2DagRunner cannot compile this pipeline: {one_line(error)} "
            f"(layout {config.layout!r})"
        ) from error
    spec = job["pipelineSpec"]
    # TFX 1.16 drops platform_config for FileBasedExampleGen (step_builder builds its
    # container without it), and ExampleGen decodes every image: restore its request.
    _set_task_resources(spec, transferline.EXAMPLE_GEN, resources[transferline.EXAMPLE_GEN])
    for task in uncached_tasks(transferline.EXAMPLE_GEN, transferline.ALWAYS_RUN_IDS):
        spec["root"]["dag"]["tasks"].get(task, {}).pop("cachingOptions", None)
    spec["defaultPipelineRoot"] = config.pipeline_root
    write_package(job, output, platform_spec=_pvc_platform_spec(spec, config.volume_mounts))
    return job


def uncached_tasks(example_gen: str, always_run: Sequence[str]) -> tuple[str, ...]:
    """The tasks compiled with KFP's cache off, whatever `enable_cache` says.

    KFP keys its cache on a task's inputs and parameters. The ExampleGen has no
    inputs, and its parameters name the image folder, not what is in it; the
    pre-cache-check TFX emits to fingerprint the folder is TFX's generic
    FileBasedDriver, which stats only what the split pattern matches (the class
    folders, not the images), and open-source Kubeflow Pipelines is not known to
    run it. A cached ExampleGen would hand a new image folder's run the old
    examples, so it always runs (and with new examples, every task after it
    does too). The nodes the pipeline always runs (the served baseline) too.
    """
    return (example_gen, *always_run)


def _set_task_resources(spec: dict[str, Any], task: str, resources: ResourceSpec) -> None:
    component = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    executor = spec["components"][component]["executorLabel"]
    container = spec["deploymentSpec"]["executors"][executor]["container"]
    container.setdefault("resources", json_format.MessageToDict(resources))


def _pvc_platform_spec(spec: dict[str, Any], volume_mounts: Mapping[str, str]
                       ) -> dict[str, Any] | None:
    """Kubeflow Pipelines' Kubernetes platform spec mounting the claims in every container."""
    if not volume_mounts:
        return None
    mounts = [{"constant": claim, "mountPath": path} for path, claim in volume_mounts.items()]
    executors = {
        label: {"pvcMount": mounts}
        for label, executor in spec["deploymentSpec"]["executors"].items()
        if "container" in executor
    }
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": executors}}}}


def _package_format(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    _require(extension in (".json", ".yaml", ".yml"),
             f"pipeline package {path!r} must end with .json, .yaml or .yml")
    return "json" if extension == ".json" else "yaml"


def write_package(job: Mapping[str, Any], path: str,
                  platform_spec: Mapping[str, Any] | None = None) -> None:
    """Writes a PipelineJob dict as JSON, or its PipelineSpec (and platform spec) as YAML."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        if _package_format(path) == "json":
            json.dump(job, f, sort_keys=True, indent=1)
        else:
            documents = [job["pipelineSpec"]] + ([platform_spec] if platform_spec else [])
            yaml.safe_dump_all(documents, f, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class CompiledPackage:
    """A compiled package as Kubeflow Pipelines sees it."""

    spec: dict[str, Any]
    pipeline_root: str | None
    platform_spec: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.spec["pipelineInfo"]["name"]

    def eval_config(self) -> dict[str, Any]:
        """The Evaluator task's EvalConfig (its JSON form); empty if it has none."""
        for _, task in sorted(self.spec["root"]["dag"]["tasks"].items()):
            constant = (task.get("inputs", {}).get("parameters", {}).get("eval_config", {})
                        .get("runtimeValue", {}).get("constant"))
            if constant and "model_specs" in constant:
                return json.loads(constant)
        return {}

    def uncached_tasks(self) -> list[str]:
        """Tasks KFP's cache never serves (all of them for a --no-cache package)."""
        return [name for name, task in sorted(self.spec["root"]["dag"]["tasks"].items())
                if not task.get("cachingOptions", {}).get("enableCache")]

    def tasks(self) -> dict[str, dict[str, Any]]:
        """Task name -> its executor spec (container, resolver or importer)."""
        components = self.spec["components"]
        executors = self.spec["deploymentSpec"]["executors"]
        return {
            name: executors[components[task["componentRef"]["name"]]["executorLabel"]]
            for name, task in sorted(self.spec["root"]["dag"]["tasks"].items())
        }


def load_package(path: str) -> CompiledPackage:
    """Reads a package written by `compile_pipeline` (either format).

    Raises:
        ValueError: The file is missing or holds no KFP PipelineSpec.
    """
    _package_format(path)
    try:
        with open(path) as f:
            documents = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]  # JSON too
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read pipeline package {path!r}: {one_line(error)}") from error
    job = documents[0] if documents else {}
    spec = job.get("pipelineSpec", job)
    try:
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    except json_format.ParseError as error:
        raise ValueError(f"{path!r} is not a KFP pipeline package: {one_line(error)}") from None
    _require("pipelineInfo" in spec and "root" in spec,
             f"{path!r} is not a KFP pipeline package (no pipelineInfo/root)")
    root = job.get("runtimeConfig", {}).get("gcsOutputDirectory") or spec.get(
        "defaultPipelineRoot"
    )
    platform_spec = next((d for d in documents[1:] if "platforms" in d), None)
    return CompiledPackage(spec=spec, pipeline_root=root, platform_spec=platform_spec)


def describe_task(executor: Mapping[str, Any]) -> str:
    """'container: cpu limit 4, memory limit 16 GB, 1 x nvidia.com/gpu', or the executor kind."""
    kind = next(iter(executor))
    resources = executor.get("container", {}).get("resources", {})
    parts = []
    for key, label in (("cpuRequest", "cpu request {}"), ("memoryRequest", "memory request {} GB"),
                       ("cpuLimit", "cpu limit {}"), ("memoryLimit", "memory limit {} GB")):
        if key in resources:
            parts.append(label.format(f"{resources[key]:g}"))
    accelerator = resources.get("accelerator")
    if accelerator:
        parts.append(f"{accelerator['count']} x {accelerator['type']}")
    return f"{kind}: {', '.join(parts)}" if parts else kind


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
