"""The `transferline` command: run the pipeline locally, classify images."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings

from pipeline import progress, settings
from pipeline.names import MODEL_NAME, check_model_name

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

EXIT_BAD_INPUT = 2
EXIT_PIPELINE_FAILED = 1


def _configure_logging(verbose: bool) -> None:
    """Quiet by default: progress only (`pipeline/progress.py`); every log with `verbose`.

    Must run before TensorFlow is imported, which reads TF_CPP_MIN_LOG_LEVEL once.
    """
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, force=True)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.INFO if verbose else logging.ERROR)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    logging.getLogger("absl").setLevel(logging.INFO)
    if not verbose:
        for handler in logging.getLogger().handlers:
            # The command prints its own one-line error for a failed step.
            handler.addFilter(lambda record: record.msg != "Execution %d failed.")


def _add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the pipeline locally on an image folder")
    run.set_defaults(handler=_run)
    run.add_argument("--data", required=True, help="image folder: one subfolder per class")
    run.add_argument("--workdir", required=True, help="artifacts, ML Metadata and pushed models")
    run.add_argument("--model-name", default=MODEL_NAME,
                     help="name under the serving dir (default: %(default)s)")
    settings.add_settings_flags(run, settings.LOCAL_SECTIONS)
    run.add_argument("--beam-arg", action="append", default=None, metavar="ARG",
                     help="Beam pipeline argument, repeatable "
                          "(e.g. --beam-arg=--runner=FlinkRunner)")
    progress.add_output_flags(run)


def _add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser("predict", help="classify images with a pushed model")
    predict.set_defaults(handler=_predict)
    predict.add_argument("--model", required=True,
                         help="a serving dir (its one model), a model dir (its newest version), "
                              "a version dir or a SavedModel")
    predict.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    predict.add_argument("--top-k", type=int, default=1, help="show the k best classes (default 1)")
    predict.add_argument("--json", action="store_true", help="print a JSON list")
    progress.add_output_flags(predict)


def _add_report_parser(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a run, and model cards"
    )
    report.set_defaults(handler=_report)
    report.add_argument("--workdir", required=True, help="the work directory of `transferline run`")
    report.add_argument("--output", help="HTML file (default: <workdir>/reports/report_<run>.html)")
    report.add_argument("--run", dest="run_name", help="ML Metadata run name (default: the latest)")
    report.add_argument("--max-images", type=int, default=None,
                        help="most misclassified images shown (default 60)")
    progress.add_output_flags(report)


def _check_workdir(workdir: str, data_root: str) -> None:
    """Refuses a local --workdir that is a file, or is --data or inside it.

    Inside the image folder, the run's own output (pipeline/, serving/) would be
    listed as class folders by the next run.

    Raises:
        ValueError: Naming --workdir.
    """
    if "://" in workdir or "://" in data_root:
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir!r} is a file; give a directory (made if missing)")
    work, data = os.path.realpath(workdir), os.path.realpath(data_root)
    if os.path.commonpath([work, data]) == data:
        raise ValueError(f"--workdir {workdir!r} is inside --data {data_root!r}: the run's "
                         "output would be read as images; give a workdir outside it")


def _run(args: argparse.Namespace) -> int:
    from components.image_folder import IngestionError, precheck_data_root
    from pipeline import workdir_lock

    try:
        check_model_name(args.model_name, "--model-name")
        _check_workdir(args.workdir, args.data)
        configs = settings.settings_from_args(args, settings.LOCAL_SECTIONS)
        precheck_data_root(args.data, span=configs[settings.INGEST].span)
        workdir_lock.check_free(os.path.abspath(args.workdir))
    except (ValueError, IngestionError, workdir_lock.WorkdirBusyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from pipeline import local_runner  # TensorFlow and TFX load only once the settings hold.
    from trainer import progress_events

    progress_events.show_raw_library_progress(args.verbose)
    # With --verbose the logs say it all, progress events included; the steps go to stdout.
    reporter = progress.reporter_for(args, sys.stdout)
    started = time.monotonic()
    try:
        with contextlib.nullcontext() if args.verbose else progress.pipeline_steps(reporter):
            summary = local_runner.run_local(
                data_root=args.data, workdir=args.workdir, model_name=args.model_name,
                training=configs[settings.TRAINING], ingest=configs[settings.INGEST],
                gate=configs[settings.GATE],
                beam_pipeline_args=args.beam_arg or local_runner.DEFAULT_BEAM_ARGS,
            )
    except workdir_lock.WorkdirBusyError as error:  # A run took the workdir since the probe.
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:  # noqa: BLE001 (one line instead of a traceback; --verbose shows it)
        unfit = _unfit_data_error(error)
        if unfit is not None:  # The data gate or ingestion stopped the run before training.
            print(f"error: {unfit}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.verbose:
            raise
        print(f"error: pipeline failed: {_one_line(error)}", file=sys.stderr)
        return EXIT_PIPELINE_FAILED
    _print_run_report(summary, args, time.monotonic() - started)
    return 0


def _unfit_data_error(error: BaseException) -> BaseException | None:
    """The IngestionError or DataGateError behind a pipeline failure, if that is what it was."""
    from components.data_gate import DataGateError
    from components.image_folder import IngestionError

    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (DataGateError, IngestionError)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _one_line(error: BaseException) -> str:
    """A failed step's exception as one line: the error that started it."""
    from trainer.errors import one_line, root_cause

    return one_line(root_cause(error))


def _print_run_report(summary: dict, args: argparse.Namespace, seconds: float) -> None:
    from pipeline.reporting.run_summary import SUMMARY_FILE, failing_checks

    examples = summary["examples"]
    accuracy = summary["metrics"].get("accuracy")
    print()
    print(f"Pipeline finished in {seconds:.0f}s")
    print(f"  images:     {', '.join(f'{split} {n}' for split, n in sorted(examples.items()))}"
          f" ({len(summary['classes'])} classes)")
    files = summary.get("files") or {}
    if files:
        print(f"  files:      {files['seen']} seen = {files.get('kept', 0)} kept + "
              f"{files.get('converted', 0)} converted + {files.get('skipped', 0)} skipped + "
              f"{files.get('ignored', 0)} ignored + {files.get('duplicate', 0)} duplicates")
    print(f"  not used:   {len(summary['skipped'])} files, skipped or duplicate "
          f"(each with its reason in {SUMMARY_FILE})")
    data_gate = summary.get("data_gate") or {}
    if summary.get("span"):
        compared = (f"; label drift from span {data_gate['compared_span']}: "
                    f"{data_gate['label_drift']:.3f}"
                    if data_gate.get("compared_span") is not None else "")
        print(f"  span:       {summary['span']}{compared}")
    for warning in summary.get("warnings", []):
        print(f"  warning:    {warning}")
    print(f"  accuracy:   {accuracy:.4f} (eval split)" if accuracy is not None
          else "  accuracy:   n/a")
    top_k = summary["metrics"].get("top_k_accuracy")
    if top_k:
        print(f"  top-{top_k['k']}:      {top_k['value']:.4f}")
    baseline = summary.get("baseline") or {}
    if baseline.get("served_version") is not None:
        print(f"  baseline:   version {baseline['served_version']}, being served "
              f"({baseline['from']})")
    elif baseline:
        print(f"  baseline:   none: {baseline['note']}")
    print(f"  blessed:    {'yes' if summary['blessed'] else 'no'}")
    for failure in failing_checks(summary.get("gate") or {}):
        print(f"  gate:       failed: {failure}")
    pushed = summary["pushed_model"]
    if pushed and not summary["pushed_this_run"]:
        print(f"  pushed:     no new version; this model already serves from {pushed}")
    else:
        print(f"  pushed:     {pushed or 'nothing (model not blessed)'}")
    print(f"  summary:    {os.path.join(args.workdir, SUMMARY_FILE)}")
    if pushed:
        example = _any_image(args.data)
        model_dir = os.path.dirname(pushed)
        print("\nTry it:")
        print(f"  {_command_path()} predict --model {model_dir} {example or 'IMAGE...'}")


def _command_path() -> str:
    """How to call this command again: the installed script beside this Python."""
    script = os.path.join(os.path.dirname(sys.executable), "transferline")
    return os.path.relpath(script) if os.path.exists(script) else "transferline"


def _any_image(data_root: str) -> str | None:
    from components import folder_walk

    for found in folder_walk.walk_image_folder(data_root):
        if folder_walk.ignore_reason(found.relative_path) is None:
            return found.path
    return None


def _predict(args: argparse.Namespace) -> int:
    """Prints one line per file: tab-separated, each field escaped (`predict.tsv_field`)."""
    from pipeline.predict import predict_files, tsv_field

    reporter = progress.reporter_for(args)
    try:
        with progress.Ticker(reporter), reporter.step("predict") as on_progress:
            predictions = predict_files(args.model, args.images, top_k=args.top_k,
                                        on_progress=on_progress)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps([p.to_json() for p in predictions], indent=2))
    else:
        for p in predictions:
            if p.error:
                fields = [f"error: {p.error}"]
            else:
                fields = [f for label, score in p.top_k for f in (label, f"{score:.4f}")]
            print("\t".join(tsv_field(field) for field in (p.path, *fields)))
    return 1 if any(p.error for p in predictions) else 0


def _report(args: argparse.Namespace) -> int:
    from pipeline.reporting import report, runs

    limit = {} if args.max_images is None else {"max_misclassified": args.max_images}
    reporter = progress.reporter_for(args)
    try:
        # The report's work has no count to show (pipeline/reporting is one call): a heartbeat.
        with progress.Ticker(reporter), reporter.step("report"):
            written = report.write_report(
                args.workdir, args.output, run_name=args.run_name, **limit)
    except runs.ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:  # noqa: BLE001 (one line instead of a traceback; --verbose shows it)
        if args.verbose:
            raise
        print(f"error: report failed: {_one_line(error)}", file=sys.stderr)
        return EXIT_PIPELINE_FAILED
    print(f"report:     {written.html}")
    for card in written.model_cards:
        print(f"model card: {card}")
    return 0


def _ignore_tf_shutdown_noise(unraisable) -> None:
    """Drops TF 2.16's harmless "Exception ignored in AtomicFunction.__del__" at exit.

    TensorFlow functions still alive when the interpreter shuts down fail in
    their destructor because module globals are already gone; nothing is lost.
    """
    if getattr(unraisable.object, "__qualname__", "") == "AtomicFunction.__del__":
        return
    sys.__unraisablehook__(unraisable)


def build_parser() -> argparse.ArgumentParser:
    """The `transferline` command line: every subcommand and its flags."""
    parser = argparse.ArgumentParser(prog="transferline", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(subparsers)
    _add_predict_parser(subparsers)
    _add_report_parser(subparsers)
    from pipeline import kubeflow_cli, scan  # argparse only: --help stays fast

    scan.register(subparsers)
    kubeflow_cli.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `transferline` command."""
    args = build_parser().parse_args(argv)
    _configure_logging(getattr(args, "verbose", False))
    sys.unraisablehook = _ignore_tf_shutdown_noise
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
