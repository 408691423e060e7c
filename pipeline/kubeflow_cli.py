"""`transferline compile | submit | schedule | kfp-local`: the pipeline on Kubeflow Pipelines.

Only argparse and the settings table are imported here; the handlers import the
compiler and the KFP client, so `transferline --help` stays fast. The settings flags
(cluster, training, ingest, gate) are `pipeline.settings`'s, the same as `run`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline import settings
from pipeline.names import EXPERIMENT_NAME

if TYPE_CHECKING:
    from pipeline.kubeflow_compile import CompiledPackage
    from pipeline.kubeflow_settings import KubeflowConfig

EXIT_BAD_INPUT = 2
EXIT_KUBEFLOW_FAILED = 1
HOST_ENV = "KF_PIPELINES_ENDPOINT"  # kfp.Client's own variable


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the compile, submit, schedule and kfp-local subcommands."""
    compile_ = subparsers.add_parser(
        "compile", help="compile the pipeline for Kubeflow Pipelines (KFP v2 IR)"
    )
    compile_.set_defaults(handler=_compile)
    compile_.add_argument(
        "--output", required=True, metavar="FILE",
        help=".json (TFX PipelineJob; Vertex AI) or .yaml (PipelineSpec; Kubeflow Pipelines)",
    )
    settings.add_settings_flags(compile_, settings.SECTIONS)

    submit = subparsers.add_parser(
        "submit", help="upload the pipeline to Kubeflow Pipelines and run it"
    )
    submit.set_defaults(handler=_submit)
    _add_upload_flags(submit)
    submit.add_argument("--run-name", help="default: '<pipeline name> <UTC time> UTC'")
    settings.add_settings_flags(submit, settings.SECTIONS)

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
    schedule.add_argument("--max-concurrency", type=int, metavar="N",
                          help="runs of this schedule at once (default: one)")
    schedule.add_argument("--catchup", action="store_true",
                          help="start the runs missed while the schedule was paused")
    settings.add_settings_flags(schedule, settings.SECTIONS)

    kfp_local = subparsers.add_parser(
        "kfp-local", help="run a compiled package on this machine, task by task (a pre-flight "
                          "check; no KFP cache, resources, retries or pods)"
    )
    kfp_local.set_defaults(handler=_kfp_local)
    kfp_local.add_argument("package", metavar="PACKAGE",
                           help="a package from `transferline compile`")
    kfp_local.add_argument("--logs", metavar="DIR",
                           help="one <task>.log per task (default: "
                                "<pipeline root>/kfp-local-logs)")


def _add_upload_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get(HOST_ENV), metavar="URL",
                        help="Kubeflow Pipelines URL, e.g. http://localhost:8080 "
                             f"(default: ${HOST_ENV})")
    parser.add_argument("--package", metavar="FILE",
                        help="a package from `transferline compile`; without it, the "
                             "settings below compile one")
    parser.add_argument("--output", metavar="FILE",
                        help="keep the package compiled for this upload here (.yaml)")
    parser.add_argument("--experiment", help=f"KFP experiment (default: {EXPERIMENT_NAME})")
    parser.add_argument("--namespace", help="KFP namespace, for multi-user deployments")
    parser.add_argument("--service-account", help="Kubernetes service account of the pods")


# ----------------------------------------------------------------------- handlers


def _compile(args: argparse.Namespace) -> int:
    from pipeline import kubeflow_compile

    try:
        _compile_package(args, args.output)
        package = kubeflow_compile.load_package(args.output)
    except ValueError as error:
        return _fail(error, EXIT_BAD_INPUT)
    _print_package(args.output, package)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from pipeline import kfp_client

    experiment = args.experiment or EXPERIMENT_NAME

    def upload(package_path: str, pipeline_name: str) -> None:
        result = kfp_client.submit_pipeline(
            args.host, package_path, pipeline_name, experiment=experiment,
            run_name=args.run_name, namespace=args.namespace,
            service_account=args.service_account,
        )
        _print_upload(result, pipeline_name)
        print(f"Started run {result['run_id']} in experiment {experiment}")
        print(f"  {result['run_url']}")

    return _with_package(args, upload)


def _schedule(args: argparse.Namespace) -> int:
    from pipeline import kfp_client

    given = {} if args.max_concurrency is None else {"max_concurrency": args.max_concurrency}

    def upload(package_path: str, pipeline_name: str) -> None:
        result = kfp_client.schedule_pipeline(
            args.host, package_path, args.cron, pipeline_name,
            experiment=args.experiment or EXPERIMENT_NAME,
            job_name=args.job_name, catchup=args.catchup, namespace=args.namespace,
            service_account=args.service_account, **given,
        )
        _print_upload(result, pipeline_name)
        cron_note = "" if result["cron"] == args.cron.strip() else f", from {args.cron.strip()!r}"
        print(f"Scheduled recurring run {result['recurring_run_id']}: cron {result['cron']!r} "
              f"(KFP: seconds first{cron_note}), at most {result['max_concurrency']} at once, "
              f"{'with' if args.catchup else 'no'} catch-up")

    try:  # a bad cron expression fails before anything is compiled or uploaded
        kfp_client.normalize_cron(args.cron)
    except ValueError as error:
        return _fail(error, EXIT_BAD_INPUT)
    return _with_package(args, upload)


def _kfp_local(args: argparse.Namespace) -> int:
    from pipeline import kfp_local, kubeflow_compile

    try:
        results = kfp_local.run_package(kubeflow_compile.load_package(args.package), args.logs)
    except ValueError as error:
        return _fail(error, EXIT_BAD_INPUT)
    failed = [result for result in results if not result.ok]
    if failed:
        print(f"error: task {failed[0].name} failed; log: {failed[0].log}", file=sys.stderr)
        return EXIT_KUBEFLOW_FAILED
    return 0


def _with_package(args: argparse.Namespace, upload: Callable[[str, str], None]) -> int:
    """Runs `upload` on --package, or on a package compiled from the settings flags."""
    from pipeline import kfp_client, kubeflow_compile

    given = settings.given_flags(args, settings.SECTIONS)
    try:
        if not args.host:
            raise ValueError(f"--host is required (or set ${HOST_ENV})")
        if args.package and given:
            raise ValueError(f"--package is already compiled; drop {', '.join(given)} "
                             "(or drop --package to compile from them)")
        with tempfile.TemporaryDirectory() as folder:
            if args.package:
                package_path = args.package
                pipeline_name = kubeflow_compile.load_package(package_path).name
            else:
                package_path = args.output or os.path.join(folder, "pipeline.yaml")
                pipeline_name = _compile_package(args, package_path).pipeline_name
            upload(package_path, pipeline_name)
    except ValueError as error:
        return _fail(error, EXIT_BAD_INPUT)
    except kfp_client.KubeflowError as error:
        return _fail(error, EXIT_KUBEFLOW_FAILED)
    return 0


def _compile_package(args: argparse.Namespace, output: str) -> KubeflowConfig:
    """Compiles from --config and the settings flags; returns the KubeflowConfig used."""
    from pipeline import kubeflow_compile

    configs = settings.settings_from_args(args, settings.SECTIONS)
    kubeflow_compile.compile_pipeline(
        output, config=configs[settings.KUBEFLOW], training=configs[settings.TRAINING],
        ingest=configs[settings.INGEST], gate=configs[settings.GATE],
    )
    return configs[settings.KUBEFLOW]


# ------------------------------------------------------------------------ output


def _print_package(path: str, package: CompiledPackage) -> None:
    from pipeline import kubeflow_compile

    tasks = package.tasks()
    images = sorted({e["container"]["image"] for e in tasks.values() if "container" in e})
    width = max(len(name) for name in tasks)
    print(f"Compiled pipeline {package.name} to {path} ({_size(os.path.getsize(path))})")
    print(f"  image:         {', '.join(images)}")
    print(f"  pipeline root: {package.pipeline_root}")
    print(f"  tasks ({len(tasks)}):")
    for name, executor in tasks.items():
        print(f"    {name:<{width}}  {kubeflow_compile.describe_task(executor)}")
    uncached = package.uncached_tasks()
    if len(uncached) == len(tasks):
        print("  KFP cache: off for every task")
    elif uncached:
        print(f"  KFP cache: on, except {', '.join(uncached)} (they read the image folder and "
              "the serving directory, which KFP's cache key cannot see; see kubeflow/README.md)")
    print(f"  gate: {_gate_line(package)}")


def _gate_line(package: CompiledPackage) -> str:
    """The Evaluator's thresholds as its eval config in the package holds them."""
    bounds = []
    for spec in package.eval_config().get("metrics_specs", []):
        for metric in spec.get("metrics", []):
            name = json.loads(metric.get("config") or "{}").get("name", metric["class_name"])
            for per_slice in metric.get("per_slice_thresholds", []):
                where = "per class" if any(s.get("feature_keys") for s in
                                           per_slice["slicing_specs"]) else "overall"
                threshold = per_slice["threshold"]
                if "value_threshold" in threshold:
                    bound = threshold["value_threshold"]["lower_bound"]
                    bounds.append(f"{name} {where} >= {bound:g}")
                if "change_threshold" in threshold:
                    change = threshold["change_threshold"]["absolute"]
                    bounds.append(f"{name} {where} change >= {change:+.4f} against the version "
                                  "being served (absolute bounds only while none is)")
    if not any("change" in bound for bound in bounds):
        bounds.append("no baseline (--no-baseline): no no-regression check")
    return "; ".join(bounds)


def _print_upload(result: dict[str, Any], pipeline_name: str) -> None:
    what = "new pipeline" if result["new_pipeline"] else "new version of pipeline"
    print(f"Uploaded {what} {pipeline_name} (id {result['pipeline_id']}): "
          f"version {result['version_name']} (id {result['version_id']})")


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} bytes"


def _fail(error: BaseException, code: int) -> int:
    print(f"error: {error}", file=sys.stderr)  # ours: one line, naming the setting
    return code

