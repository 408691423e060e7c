"""Where and how the pipeline runs on a Kubeflow cluster: `KubeflowConfig`.

The settings of the config file's `kubeflow` section and of the cluster flags of
`transferline compile | submit | schedule` (declared in `pipeline.settings`), with
the checks that refuse impossible ones. Compiling is `pipeline.kubeflow_compile`;
uploading and running is `pipeline.kfp_client`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from components import image_folder
from pipeline.names import MODEL_NAME, PIPELINE_NAME, check_model_name

# Beam on the component's own pod (DirectRunner), one worker process per core; the
# same defaults as TFX's Kubeflow templates. Any --beam-arg replaces them all.
DEFAULT_BEAM_ARGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=0")

# The data folder's layout: "auto" (list it at compile time) or one of
# components.image_folder.LAYOUTS.
LAYOUT_AUTO = "auto"
OBJECT_STORE_SCHEMES = ("gs", "s3", "hdfs")

PIPELINE_NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
"""What Kubeflow Pipelines accepts as a pipeline name."""
_CLAIM_NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


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
        layout: One of image_folder.LAYOUTS ("classes": a folder per
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
        baseline: Evaluate against the version being served (a ServingBaseline
            task reads it from the serving directory); false leaves it out and
            keeps only the absolute gate bounds.
        pvc_mounts: "CLAIM:/mount/path" entries: PersistentVolumeClaims mounted in
            every task pod (Kubeflow Pipelines only, .yaml packages only).
    """

    SECTION_LABEL = "kubeflow"

    image: str = ""
    pipeline_root: str = ""
    data_root: str = ""
    serving_dir: str = ""
    model_name: str = MODEL_NAME
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
        check_model_name(self.model_name)
        _require(PIPELINE_NAME_PATTERN.fullmatch(self.pipeline_name) is not None,
                 f"pipeline_name must be lower-case letters, digits and '-', starting and "
                 f"ending with a letter or digit, got {self.pipeline_name!r}")
        layouts = (LAYOUT_AUTO, *image_folder.LAYOUTS)
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
