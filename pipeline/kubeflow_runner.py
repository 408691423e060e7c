"""Runs the pipeline on Kubeflow: compile to KFP v2 IR, then upload, run or schedule it.

Compiling builds the same `create_pipeline(...)` as the local runner and hands it to
TFX's KubeflowV2DagRunner; only paths, resources and the runner differ. TensorFlow
and TFX are imported by the compile functions alone: submitting a compiled package
does not load them.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports TensorFlow

import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components.config import GateConfig, IngestConfig

if TYPE_CHECKING:
    from trainer.config import TrainingConfig  # imports TensorFlow

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec

PIPELINE_NAME = "transferline"
DEFAULT_EXPERIMENT = "transferline"
# Beam on the component's own pod (DirectRunner), one worker process per core; the
# same defaults as TFX's Kubeflow templates. Any --beam-arg replaces them all.
DEFAULT_BEAM_ARGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=0")

# The data folder's layout: "auto" (list it at compile time) or one of
# components.image_folder_example_gen.LAYOUTS.
LAYOUT_AUTO = "auto"
OBJECT_STORE_SCHEMES = ("gs", "s3", "hdfs")

# kfp.Client's own variable: a file holding a token, re-read on every request.
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
# A token obtained outside the SDK (kfp.Client's `existing_token`).
TOKEN_ENV = "TRANSFERLINE_KFP_TOKEN"

_PIPELINE_NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CLAIM_NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class KubeflowError(RuntimeError):
    """Kubeflow Pipelines could not be reached or refused a request (one line, no secrets)."""


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
    """Where and how the pipeline runs on a Kubeflow cluster (config file section `kubeflow`).

    Paths are read by the pods, not by this machine: each is an object-store URI
    (gs://, s3://, hdfs://) or an absolute path the pods mount (see `pvc_mounts`).
    s3:// needs tensorflow-io in the image, which constraints.txt does not pin.

    Attributes:
        image: Container image with this project installed (kubeflow/Dockerfile).
        pipeline_root: Where TFX writes artifacts.
        data_root: The image folder (see `layout`).
        serving_dir: TF Serving's base directory; models go to `<serving_dir>/<model_name>`.
        model_name: The TF Serving model name.
        pipeline_name: Pipeline name in KFP and ML Metadata.
        layout: One of image_folder_example_gen.LAYOUTS ("classes": a folder per
            class; "presplit": train/ and val/; "span-classes": span-<N>/<class>/...),
            or "auto": list `data_root` at compile time to find out, which needs
            this machine to see it; object stores need an explicit layout.
        trainer_gpus: GPUs for the Trainer; 0 trains on CPU.
        trainer_gpu_type: The accelerator: a Kubernetes resource name on Kubeflow
            Pipelines ("nvidia.com/gpu"), a type on Vertex AI ("NVIDIA_TESLA_T4").
        trainer_cpu: CPU limit of the Trainer.
        trainer_memory_gb: Memory limit of the Trainer, in GB.
        node_cpu: CPU request of every other container node.
        node_memory_gb: Memory request of every other container node, in GB.
        beam_pipeline_args: Beam arguments for every Beam-based node (e.g.
            --runner=DataflowRunner --project=... --region=... --temp_location=gs://...).
        enable_cache: Let KFP reuse outputs of unchanged tasks.
        baseline: Evaluate against the last blessed model, found by resolver
            tasks (Vertex AI Pipelines runs them); false compiles no resolver and
            keeps only the absolute gate bounds (open-source Kubeflow Pipelines).
        pvc_mounts: "CLAIM:/mount/path" entries: PersistentVolumeClaims mounted in
            every task pod (Kubeflow Pipelines only, .yaml packages only).
    """

    SECTION_LABEL = "kubeflow"

    image: str = ""
    pipeline_root: str = ""
    data_root: str = ""
    serving_dir: str = ""
    model_name: str = "transferline"
    pipeline_name: str = PIPELINE_NAME
    layout: str = LAYOUT_AUTO
    trainer_gpus: int = 0
    trainer_gpu_type: str = "nvidia.com/gpu"
    trainer_cpu: float = 4.0
    trainer_memory_gb: float = 16.0
    node_cpu: float = 1.0
    node_memory_gb: float = 4.0
    beam_pipeline_args: tuple[str, ...] = DEFAULT_BEAM_ARGS
    enable_cache: bool = True
    pvc_mounts: tuple[str, ...] = ()
    baseline: bool = True

    def __post_init__(self) -> None:
        # Lists from YAML or argparse become tuples, so the config stays hashable.
        object.__setattr__(self, "beam_pipeline_args", tuple(self.beam_pipeline_args))
        object.__setattr__(self, "pvc_mounts", tuple(self.pvc_mounts))

    @property
    def volume_mounts(self) -> dict[str, str]:
        """Mount path -> claim name, from `pvc_mounts`."""
        return {mount.partition(":")[2]: mount.partition(":")[0] for mount in self.pvc_mounts}

    @property
    def serving_model_dir(self) -> str:
        """The push destination: TF Serving's `<base>/<model name>`."""
        return f"{self.serving_dir.rstrip('/')}/{self.model_name}"

    def validate(self) -> KubeflowConfig:
        """Checks every setting; returns self so calls can chain.

        Raises:
            ValueError: A setting is impossible; the message names it and the fix.
        """
        _require(bool(self.image) and not re.search(r"\s", self.image),
                 f"image must name a container image (e.g. registry.example.com/transferline:1), "
                 f"got {self.image!r}")
        for mount in self.pvc_mounts:
            claim, _, mount_path = mount.partition(":")
            _require(_CLAIM_NAME_PATTERN.fullmatch(claim) is not None
                     and mount_path.startswith("/"),
                     f"pvc_mounts entries must be CLAIM:/mount/path with a Kubernetes claim "
                     f"name, got {mount!r}")
        for name in ("pipeline_root", "data_root", "serving_dir"):
            _require_pod_path(name, getattr(self, name))
        _require(_MODEL_NAME_PATTERN.fullmatch(self.model_name) is not None,
                 f"model_name must be letters, digits, '_', '.' or '-', got {self.model_name!r}")
        _require(_PIPELINE_NAME_PATTERN.fullmatch(self.pipeline_name) is not None,
                 f"pipeline_name must be lower-case letters, digits and '-', starting and "
                 f"ending with a letter or digit, got {self.pipeline_name!r}")
        layouts = (LAYOUT_AUTO, *_data_layouts())
        _require(self.layout in layouts,
                 f"layout must be one of {', '.join(layouts)}, got {self.layout!r}")
        _require(not (self.layout == LAYOUT_AUTO and is_object_store(self.data_root)),
                 f"layout must be given (e.g. 'classes' or 'presplit') for data_root "
                 f"{self.data_root!r}: 'auto' lists the folder at compile time")
        _require(isinstance(self.trainer_gpus, int) and self.trainer_gpus >= 0,
                 "trainer_gpus must be a whole number >= 0 (0 = no GPU), "
                 f"got {self.trainer_gpus!r}")
        _require(self.trainer_gpus == 0 or bool(self.trainer_gpu_type.strip()),
                 "trainer_gpu_type must name the accelerator when trainer_gpus > 0 "
                 "(e.g. nvidia.com/gpu)")
        for name in ("trainer_cpu", "trainer_memory_gb", "node_cpu", "node_memory_gb"):
            value = getattr(self, name)
            _require(isinstance(value, (int, float)) and value > 0,
                     f"{name} must be a number > 0, got {value!r}")
        _check_beam_args(self.beam_pipeline_args)
        return self


def _data_layouts() -> tuple[str, ...]:
    from components import image_folder_example_gen  # imports TensorFlow

    return image_folder_example_gen.LAYOUTS


def is_object_store(path: str) -> bool:
    """True for URIs such as gs://bucket/dir, which this machine may not be able to list."""
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def _require_pod_path(name: str, path: str) -> None:
    if is_object_store(path):
        scheme = path.split("://", 1)[0]
        _require(scheme in OBJECT_STORE_SCHEMES,
                 f"{name} scheme {scheme}:// is not one TFX can write; use "
                 f"{', '.join(s + '://' for s in OBJECT_STORE_SCHEMES)} or an absolute path")
        return
    _require(path.startswith("/"),
             f"{name} must be an object-store URI (gs://...) or an absolute path the pods "
             f"mount (see pvc_mounts), got {path!r}")


def _check_beam_args(args: Sequence[str]) -> None:
    for arg in args:
        _require(arg.startswith("--"),
                 f"beam_pipeline_args entries must be Beam flags like --runner=FlinkRunner, "
                 f"got {arg!r}")
    if "--runner=DataflowRunner" in args:
        missing = [flag for flag in ("--project", "--region", "--temp_location")
                   if not any(arg.startswith(flag + "=") for arg in args)]
        _require(not missing, f"beam_pipeline_args with DataflowRunner also need {missing}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# ------------------------------------------------------------------- config file

def config_sections() -> dict[str, type]:
    """The config file's sections and the settings class of each."""
    from trainer.config import TrainingConfig

    return {"kubeflow": KubeflowConfig, "training": TrainingConfig, "ingest": IngestConfig,
            "gate": GateConfig}


def read_config_file(path: str) -> dict[str, dict[str, Any]]:
    """Reads a YAML or JSON file of settings by section (see `config_sections`),
    checking every value against its setting's type (`trainer.config_file`).

    Example:
        kubeflow: {image: registry.example.com/transferline:1, trainer_gpus: 1, ...}
        training: {epochs: 20}

    Raises:
        ValueError: The file is unreadable, or names an unknown section or setting,
            or a value of the wrong type.
    """
    from trainer.config_file import read_config_file as read_sections

    return read_sections(path, config_sections())


# ---------------------------------------------------------------------- compile


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

    Warm start is off in the compiled pipeline: it resolves its base model from
    ML Metadata's lineage (`pipeline.warm_start_resolver`), and KFP v2 runs only
    TFX's two canned resolver strategies. A rolling window of spans
    (`ingest.span_window` > 1) is refused for the same reason.

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
    # Resolvers have no container, so nothing to size.
    container_nodes = [n for n in transferline.NODE_IDS if n not in transferline.RESOLVER_IDS]
    resources = resource_specs(config, container_nodes, transferline.TRAINER)
    tfx_pipeline = transferline.create_pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        data_root=config.data_root,
        serving_model_dir=config.serving_model_dir,
        training=dataclasses.replace(training or TrainingConfig(), warm_start=False),
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
            f"TFX's KubeflowV2DagRunner cannot compile this pipeline: {error} "
            f"(layout {config.layout!r})"
        ) from error
    spec = job["pipelineSpec"]
    # TFX 1.16 drops platform_config for FileBasedExampleGen (step_builder builds its
    # container without it), and ExampleGen decodes every image: restore its request.
    _set_task_resources(spec, transferline.EXAMPLE_GEN, resources[transferline.EXAMPLE_GEN])
    spec["defaultPipelineRoot"] = config.pipeline_root
    write_package(job, output, platform_spec=_pvc_platform_spec(spec, config.volume_mounts))
    return job


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
        raise ValueError(f"cannot read pipeline package {path!r}: {error}") from error
    job = documents[0] if documents else {}
    spec = job.get("pipelineSpec", job)
    try:
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    except json_format.ParseError as error:
        raise ValueError(f"{path!r} is not a KFP pipeline package: {error}") from None
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


# ------------------------------------------------------------ submit and schedule


def submit_pipeline(
    host: str,
    package_path: str,
    pipeline_name: str = PIPELINE_NAME,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """Uploads a compiled package (new pipeline, or a new version of it) and starts a run.

    Credentials: kfp.Client's own mechanisms (IAP variables, kubeflow context
    cookies), plus a token file named by $KF_PIPELINES_SA_TOKEN_PATH or a token
    in $TRANSFERLINE_KFP_TOKEN. They are sent to `host` and never printed.

    Returns:
        Ids: pipeline_id, version_id, version_name, new_pipeline, experiment_id,
        run_id, and run_url.

    Raises:
        ValueError: The package or a setting is unusable.
        KubeflowError: Kubeflow Pipelines could not be reached or refused.
    """
    package = _load_for_upload(package_path, pipeline_name)
    with _kfp_session(host, namespace) as client:
        uploaded = _upload(client, package, pipeline_name)
        experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
        run = client.run_pipeline(
            experiment_id=experiment_id,
            job_name=run_name or f"{pipeline_name} {_utc_now():%Y-%m-%d %H:%M:%S} UTC",
            pipeline_id=uploaded["pipeline_id"],
            version_id=uploaded["version_id"],
            pipeline_root=package.pipeline_root,
            service_account=service_account,
        )
    return {**uploaded, "experiment_id": experiment_id, "run_id": run.run_id,
            "run_url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}


def schedule_pipeline(
    host: str,
    package_path: str,
    cron: str,
    pipeline_name: str = PIPELINE_NAME,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    job_name: str | None = None,
    max_concurrency: int = 1,
    catchup: bool = False,
    namespace: str | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """Uploads a compiled package like `submit_pipeline` and creates a recurring run.

    Args:
        cron: 5 fields (minute hour day month weekday, as in crontab) or KFP's 6
            (seconds first); 5 fields get a leading "0" seconds field, because KFP
            would read "0 3 * * *" as "second 0, minute 3, every hour".
        max_concurrency: Runs of this schedule allowed at once.
        catchup: Start the runs missed while the schedule was paused.

    Returns:
        The upload ids, experiment_id, recurring_run_id and cron (as sent).

    Raises:
        ValueError: Bad cron expression or package.
        KubeflowError: Kubeflow Pipelines could not be reached or refused.
    """
    kfp_cron = normalize_cron(cron)
    _require(max_concurrency >= 1, f"max_concurrency must be >= 1, got {max_concurrency}")
    package = _load_for_upload(package_path, pipeline_name)
    with _kfp_session(host, namespace) as client:
        uploaded = _upload(client, package, pipeline_name)
        experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
        recurring = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name or f"{pipeline_name}-schedule",
            cron_expression=kfp_cron,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            pipeline_id=uploaded["pipeline_id"],
            version_id=uploaded["version_id"],
            pipeline_root=package.pipeline_root,
            service_account=service_account,
        )
    return {**uploaded, "experiment_id": experiment_id,
            "recurring_run_id": recurring.recurring_run_id, "cron": kfp_cron}


_CRON_FIELDS = (  # name, lowest, highest value
    ("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23),
    ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7),
)


def normalize_cron(cron: str) -> str:
    """KFP's 6-field cron expression for a 5- or 6-field one.

    Raises:
        ValueError: Not 5 or 6 fields, or a field holds an impossible value.
    """
    fields = cron.split()
    _require(len(fields) in (5, 6),
             f"cron must have 5 fields (minute hour day month weekday) or 6 (seconds first), "
             f"got {len(fields)} in {cron!r}")
    if len(fields) == 5:
        fields = ["0", *fields]
    for value, (name, lowest, highest) in zip(fields, _CRON_FIELDS, strict=True):
        _require(re.fullmatch(r"[0-9A-Za-z*?/,#-]+", value) is not None,
                 f"cron {name} field {value!r} has characters cron does not use")
        # Numbers after '/' are steps; the others must be in the field's range.
        for number in re.findall(r"(?<![/\d])\d+", value):
            _require(lowest <= int(number) <= highest,
                     f"cron {name} must be in {lowest}-{highest}, got {number} in {cron!r}")
    return " ".join(fields)


def _load_for_upload(package_path: str, pipeline_name: str) -> CompiledPackage:
    _require(_PIPELINE_NAME_PATTERN.fullmatch(pipeline_name) is not None,
             f"pipeline name {pipeline_name!r} must be lower-case letters, digits and '-'")
    return load_package(package_path)


def _upload(client: Any, package: CompiledPackage, pipeline_name: str) -> dict[str, Any]:
    """Uploads the PipelineSpec as a new pipeline, or as a new version of an existing one."""
    documents = [package.spec] + ([package.platform_spec] if package.platform_spec else [])
    spec_yaml = yaml.safe_dump_all(documents, sort_keys=True)
    digest = hashlib.sha256(spec_yaml.encode()).hexdigest()[:8]
    version_name = f"{pipeline_name}-{_utc_now():%Y%m%d-%H%M%S}-{digest}"
    with tempfile.TemporaryDirectory() as folder:
        # Kubeflow Pipelines takes a bare PipelineSpec in YAML (then an optional platform
        # spec), not TFX's PipelineJob JSON.
        spec_path = os.path.join(folder, f"{pipeline_name}.yaml")
        with open(spec_path, "w") as f:
            f.write(spec_yaml)
        pipeline_id = client.get_pipeline_id(pipeline_name)
        new_pipeline = pipeline_id is None
        if new_pipeline:
            pipeline_id = client.upload_pipeline(spec_path, pipeline_name=pipeline_name).pipeline_id
            version = _latest_version(client, pipeline_id)
        else:
            version = client.upload_pipeline_version(
                spec_path, version_name, pipeline_id=pipeline_id
            )
    return {
        "pipeline_id": pipeline_id,
        "version_id": version.pipeline_version_id,
        "version_name": version.display_name or version_name,
        "new_pipeline": new_pipeline,
    }


def _latest_version(client: Any, pipeline_id: str) -> Any:
    """The version Kubeflow Pipelines made when the pipeline was uploaded."""
    versions = client.list_pipeline_versions(
        pipeline_id, page_size=1, sort_by="created_at desc"
    ).pipeline_versions
    if not versions:
        raise KubeflowError(f"Kubeflow Pipelines created pipeline {pipeline_id} without a version")
    return versions[0]


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@contextlib.contextmanager
def _kfp_session(host: str, namespace: str | None) -> Iterator[Any]:
    """A kfp.Client for `host`; kfp's chatter silenced, its failures made one line."""
    _require(re.match(r"https?://[^/\s]+", host or "") is not None,
             f"host must be the Kubeflow Pipelines URL, e.g. http://localhost:8080, got {host!r}")
    import kfp
    import kfp_server_api
    import urllib3
    from kfp.client import set_volume_credentials

    token = os.environ.get(TOKEN_ENV) or None
    token_file = None if token else os.environ.get(SA_TOKEN_PATH_ENV) or None
    credentials = token_file and set_volume_credentials.ServiceAccountTokenVolumeCredentials(
        token_file
    )
    logging_disabled = logging.root.manager.disable
    try:
        # kfp prints links, warns and logs tracebacks; the caller reports what happened.
        logging.disable(logging.CRITICAL)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            client = kfp.Client(
                host=host.rstrip("/"), existing_token=token, credentials=credentials or None,
                namespace=namespace or "kubeflow",
            )
            _check_api(client, host)
            yield client
    except urllib3.exceptions.HTTPError as error:
        raise KubeflowError(
            f"cannot reach Kubeflow Pipelines at {host}: {_connection_reason(error)}"
        ) from error
    except kfp_server_api.ApiException as error:
        raise KubeflowError(
            f"Kubeflow Pipelines at {host} refused the request: {_api_reason(error)}"
        ) from error
    except TimeoutError as error:  # kfp.Client's health check gave up
        raise KubeflowError(
            f"Kubeflow Pipelines at {host} did not pass its health check "
            "(GET /apis/v2beta1/healthz); check the URL and credentials"
        ) from error
    except OSError as error:
        if token_file is None or error.filename != token_file:
            raise
        raise KubeflowError(
            f"cannot read the token file named by ${SA_TOKEN_PATH_ENV}: {error.strerror}"
        ) from error
    finally:
        logging.disable(logging_disabled)


def _check_api(client: Any, host: str) -> None:
    """Fails clearly when `host` answers with a web page (a login redirect) instead of JSON."""
    response = client.healthzs.get_healthz(_preload_content=False)
    if "json" not in response.headers.get("Content-Type", ""):
        raise KubeflowError(
            f"{host} answered with {response.headers.get('Content-Type') or 'no content type'}, "
            "not the Kubeflow Pipelines API (a login page?); check the URL and credentials"
        )


def _connection_reason(error: Exception) -> str:
    reason = str(getattr(error, "reason", None) or error)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", reason)
    text = match.group(1) if match else reason.rsplit(": ", 1)[-1]
    return text.strip().rstrip(".")[:200].lower()


def _api_reason(error: Any) -> str:
    detail = ""
    try:
        body = json.loads(error.body or "{}")
        detail = body.get("error_message") or body.get("message") or body.get("error") or ""
    except (TypeError, ValueError, AttributeError):
        pass
    text = f"{error.status} {error.reason or ''}".strip()
    detail = " ".join(str(detail).split())[:300]
    return f"{text}: {detail}" if detail else text
