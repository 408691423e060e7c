"""`transferline compile | submit | schedule`: the pipeline on Kubeflow Pipelines.

Only argparse is imported here; the handlers import the runner, so `transferline
--help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.kubeflow_runner import CompiledPackage, KubeflowConfig

EXIT_BAD_INPUT = 2
EXIT_KUBEFLOW_FAILED = 1
HOST_ENV = "KF_PIPELINES_ENDPOINT"  # kfp.Client's own variable

# Flag destinations per config section; each dest is the setting's field name.
_KUBEFLOW_FLAGS = (
    "image", "pipeline_root", "data_root", "serving_dir", "model_name", "pipeline_name",
    "layout", "trainer_gpus", "trainer_gpu_type", "trainer_cpu", "trainer_memory_gb",
    "node_cpu", "node_memory_gb", "beam_pipeline_args", "enable_cache", "pvc_mounts",
    "baseline",
)
_TRAINING_FLAGS = ("backbone", "weights", "epochs", "image_size", "batch_size", "learning_rate")
_INGEST_FLAGS = (
    "eval_percent", "test_percent", "min_images_per_class", "min_examples", "max_label_drift",
)
_GATE_FLAGS = ("min_accuracy", "max_accuracy_drop")
_SECTION_FLAGS = {
    "kubeflow": _KUBEFLOW_FLAGS,
    "training": _TRAINING_FLAGS,
    "ingest": _INGEST_FLAGS,
    "gate": _GATE_FLAGS,
}
_COMPILE_FLAGS = ("config",) + sum(_SECTION_FLAGS.values(), ())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the compile, submit and schedule subcommands."""
    compile_ = subparsers.add_parser(
        "compile", help="compile the pipeline for Kubeflow Pipelines (KFP v2 IR)"
    )
    compile_.set_defaults(handler=_compile)
    compile_.add_argument(
        "--output", required=True, metavar="FILE",
        help=".json (TFX PipelineJob; Vertex AI) or .yaml (PipelineSpec; Kubeflow Pipelines)",
    )
    _add_compile_flags(compile_)

    submit = subparsers.add_parser(
        "submit", help="upload the pipeline to Kubeflow Pipelines and run it"
    )
    submit.set_defaults(handler=_submit)
    _add_upload_flags(submit)
    submit.add_argument("--run-name", help="default: '<pipeline name> <UTC time> UTC'")

    schedule = subparsers.add_parser(
        "schedule", help="upload the pipeline to Kubeflow Pipelines and run it on a cron schedule"
    )
    schedule.set_defaults(handler=_schedule)
    _add_upload_flags(schedule)
    schedule.add_argument(
        "--cron", required=True,
        help="'MIN HOUR DAY MONTH WEEKDAY' (e.g. '0 3 * * *'), or KFP's 6 fields with "
             "seconds first; in the scheduler's time zone (UTC by default)",
    )
    schedule.add_argument("--job-name", help="default: '<pipeline name>-schedule'")
    schedule.add_argument("--max-concurrency", type=int, default=1,
                          help="runs of this schedule at once (default 1)")
    schedule.add_argument("--catchup", action="store_true",
                          help="start the runs missed while the schedule was paused")


def _add_upload_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get(HOST_ENV), metavar="URL",
                        help="Kubeflow Pipelines URL, e.g. http://localhost:8080 "
                             f"(default: ${HOST_ENV})")
    parser.add_argument("--package", metavar="FILE",
                        help="a package from `transferline compile`; without it, the "
                             "settings below compile one")
    parser.add_argument("--output", metavar="FILE",
                        help="keep the package compiled for this upload here (.yaml)")
    parser.add_argument("--experiment", help="KFP experiment (default: transferline)")
    parser.add_argument("--namespace", help="KFP namespace, for multi-user deployments")
    parser.add_argument("--service-account", help="Kubernetes service account of the pods")
    _add_compile_flags(parser)


def _add_compile_flags(parser: argparse.ArgumentParser) -> None:
    # Every setting defaults to None here: the defaults live once, in the config classes,
    # and a --config file sits between the two.
    cluster = parser.add_argument_group("cluster settings (override --config)")
    add = cluster.add_argument
    add("--config", metavar="FILE", help="YAML/JSON: kubeflow, training, ingest, gate sections")
    add("--image", help="container image with this project (kubeflow/Dockerfile)")
    add("--pipeline-root", metavar="URI", help="artifact root as the pods see it")
    add("--data", dest="data_root", metavar="URI", help="image folder as the pods see it")
    add("--serving-dir", metavar="URI", help="TF Serving base dir; models go to <dir>/<model>")
    add("--model-name", help="TF Serving model name (default: transferline)")
    add("--pipeline-name", help="KFP pipeline name (default: transferline)")
    add("--layout", help="data folder layout: classes, presplit, span-classes, ... or 'auto' "
                         "(default: list the folder at compile time)")
    add("--gpus", dest="trainer_gpus", type=int, metavar="N", help="Trainer GPUs (default 0)")
    add("--gpu-type", dest="trainer_gpu_type", metavar="TYPE",
        help="nvidia.com/gpu (Kubeflow Pipelines; default) or e.g. NVIDIA_TESLA_T4 (Vertex AI)")
    add("--trainer-cpu", type=float, metavar="N", help="Trainer CPU limit")
    add("--trainer-memory-gb", type=float, metavar="GB", help="Trainer memory limit")
    add("--node-cpu", type=float, metavar="N", help="CPU request of the other nodes")
    add("--node-memory-gb", type=float, metavar="GB", help="memory request of the other nodes")
    add("--beam-arg", dest="beam_pipeline_args", action="append", metavar="ARG",
        help="Beam argument, repeatable; replaces the defaults (--beam-arg=--runner=FlinkRunner)")
    add("--pvc", dest="pvc_mounts", action="append", metavar="CLAIM:/PATH",
        help="mount a PersistentVolumeClaim in every task pod, repeatable (needs .yaml)")
    add("--no-cache", dest="enable_cache", action="store_const", const=False,
        help="compile with KFP caching off (advised for schedules)")
    add("--no-baseline", dest="baseline", action="store_const", const=False,
        help="no resolver tasks (open-source Kubeflow Pipelines runs none): the Evaluator "
             "applies the absolute bounds only, not the no-regression one")
    training = parser.add_argument_group(
        "training, ingest and gate settings (as for `transferline run`; more in --config)"
    )
    training.add_argument("--backbone")
    training.add_argument("--weights")
    training.add_argument("--epochs", type=int)
    training.add_argument("--image-size", type=int)
    training.add_argument("--batch-size", type=int)
    training.add_argument("--learning-rate", type=float)
    training.add_argument("--min-accuracy", type=float)
    training.add_argument("--max-accuracy-drop", type=float)
    training.add_argument("--eval-percent", type=int)
    training.add_argument("--test-percent", type=int)
    training.add_argument("--min-images-per-class", type=int)
    training.add_argument("--min-examples", type=int)
    training.add_argument("--max-label-drift", type=float)


# ----------------------------------------------------------------------- handlers


def _compile(args: argparse.Namespace) -> int:
    from pipeline import kubeflow_runner

    try:
        _compile_package(args, args.output)
        package = kubeflow_runner.load_package(args.output)
    except ValueError as error:
        return _fail(error, EXIT_BAD_INPUT)
    _print_package(args.output, package)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from pipeline import kubeflow_runner

    experiment = args.experiment or kubeflow_runner.DEFAULT_EXPERIMENT

    def upload(package_path: str, pipeline_name: str) -> None:
        result = kubeflow_runner.submit_pipeline(
            args.host, package_path, pipeline_name, experiment=experiment,
            run_name=args.run_name, namespace=args.namespace,
            service_account=args.service_account,
        )
        _print_upload(result, pipeline_name)
        print(f"Started run {result['run_id']} in experiment {experiment}")
        print(f"  {result['run_url']}")

    return _with_package(args, upload)


def _schedule(args: argparse.Namespace) -> int:
    from pipeline import kubeflow_runner

    def upload(package_path: str, pipeline_name: str) -> None:
        result = kubeflow_runner.schedule_pipeline(
            args.host, package_path, args.cron, pipeline_name,
            experiment=args.experiment or kubeflow_runner.DEFAULT_EXPERIMENT,
            job_name=args.job_name, max_concurrency=args.max_concurrency,
            catchup=args.catchup, namespace=args.namespace,
            service_account=args.service_account,
        )
        _print_upload(result, pipeline_name)
        cron_note = "" if result["cron"] == args.cron.strip() else f", from {args.cron.strip()!r}"
        print(f"Scheduled recurring run {result['recurring_run_id']}: cron {result['cron']!r} "
              f"(KFP: seconds first{cron_note}), at most {args.max_concurrency} at once, "
              f"{'with' if args.catchup else 'no'} catch-up")

    try:  # a bad cron expression fails before anything is compiled or uploaded
        kubeflow_runner.normalize_cron(args.cron)
    except ValueError as error:
        return _fail(error, EXIT_BAD_INPUT)
    return _with_package(args, upload)


def _with_package(args: argparse.Namespace, upload: Callable[[str, str], None]) -> int:
    """Runs `upload` on --package, or on a package compiled from the flags."""
    from pipeline import kubeflow_runner

    given = sorted(f"--{name.replace('_', '-')}" for name in _COMPILE_FLAGS
                   if getattr(args, name, None) is not None)
    try:
        if not args.host:
            raise ValueError(f"--host is required (or set ${HOST_ENV})")
        if args.package and given:
            raise ValueError(f"--package is already compiled; drop {', '.join(given)} "
                             "(or drop --package to compile from them)")
        with tempfile.TemporaryDirectory() as folder:
            if args.package:
                package_path = args.package
                pipeline_name = kubeflow_runner.load_package(package_path).name
            else:
                package_path = args.output or os.path.join(folder, "pipeline.yaml")
                pipeline_name = _compile_package(args, package_path).pipeline_name
            upload(package_path, pipeline_name)
    except ValueError as error:
        return _fail(error, EXIT_BAD_INPUT)
    except kubeflow_runner.KubeflowError as error:
        return _fail(error, EXIT_KUBEFLOW_FAILED)
    return 0


def _compile_package(args: argparse.Namespace, output: str) -> KubeflowConfig:
    """Compiles from --config and flags; returns the KubeflowConfig used."""
    from pipeline import kubeflow_runner

    sections = kubeflow_runner.read_config_file(args.config) if args.config else {}
    configs = {
        section: _config_with_flags(
            config_class, sections.get(section, {}), args, _SECTION_FLAGS[section]
        )
        for section, config_class in kubeflow_runner.config_sections().items()
    }
    kubeflow_runner.compile_pipeline(
        output, config=configs["kubeflow"], training=configs["training"],
        ingest=configs["ingest"], gate=configs["gate"],
    )
    return configs["kubeflow"]


def _config_with_flags(
    config_class: type, values: dict[str, Any], args: argparse.Namespace, flags: tuple[str, ...]
) -> Any:
    """`config_class` from the config file's values, with the given flags on top."""
    from trainer.config_file import build_config

    given = {name: getattr(args, name) for name in flags if getattr(args, name, None) is not None}
    return build_config(config_class, {**values, **given}).validate()


# ------------------------------------------------------------------------ output


def _print_package(path: str, package: CompiledPackage) -> None:
    from pipeline import kubeflow_runner

    tasks = package.tasks()
    images = sorted({e["container"]["image"] for e in tasks.values() if "container" in e})
    width = max(len(name) for name in tasks)
    print(f"Compiled pipeline {package.name} to {path} ({_size(os.path.getsize(path))})")
    print(f"  image:         {', '.join(images)}")
    print(f"  pipeline root: {package.pipeline_root}")
    print(f"  tasks ({len(tasks)}):")
    for name, executor in tasks.items():
        print(f"    {name:<{width}}  {kubeflow_runner.describe_task(executor)}")
    resolvers = sum("resolver" in executor for executor in tasks.values())
    if resolvers:
        print(f"  note: Vertex AI Pipelines runs the {resolvers} resolver tasks; open-source "
              "Kubeflow Pipelines 2.x does not (see kubeflow/README.md)")
    print("  note: no warm start in compiled pipelines (training.warm_start finds its base "
          "model through ML Metadata lineage, which KFP v2 cannot; see kubeflow/README.md)")


def _print_upload(result: dict[str, Any], pipeline_name: str) -> None:
    what = "new pipeline" if result["new_pipeline"] else "new version of pipeline"
    print(f"Uploaded {what} {pipeline_name} (id {result['pipeline_id']}): "
          f"version {result['version_name']} (id {result['version_id']})")


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} bytes"


def _fail(error: BaseException, code: int) -> int:
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return code

