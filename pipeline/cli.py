"""The `transferline` command: run the pipeline locally, classify images."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import warnings

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

EXIT_BAD_INPUT = 2
EXIT_PIPELINE_FAILED = 1


class _StepLogger(logging.Handler):
    """Turns TFX's 'Component X is running/finished' records into one line each."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self._started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "Component %s is running.":
            node = record.args[0]
            self._started[node] = time.monotonic()
            print(f"[{time.strftime('%H:%M:%S')}] {node} started", flush=True)
        elif record.msg == "Component %s is finished.":
            node = record.args[0]
            took = time.monotonic() - self._started.get(node, time.monotonic())
            print(f"[{time.strftime('%H:%M:%S')}] {node} finished in {took:.1f}s", flush=True)


def _configure_logging(verbose: bool) -> None:
    """Quiet by default: one line per pipeline step; everything with `verbose`.

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
    absl_logger = logging.getLogger("absl")
    absl_logger.setLevel(logging.INFO)
    if not verbose:
        absl_logger.addHandler(_StepLogger())
        for handler in logging.getLogger().handlers:
            # The command prints its own one-line error for a failed step.
            handler.addFilter(lambda record: record.msg != "Execution %d failed.")


def _add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the pipeline locally on an image folder")
    run.set_defaults(handler=_run)
    run.add_argument("--data", required=True, help="image folder: one subfolder per class")
    run.add_argument("--workdir", required=True, help="artifacts, ML Metadata and pushed models")
    run.add_argument("--model-name", default="transferline", help="name under the serving dir")
    run.add_argument("--config", metavar="FILE",
                     help="YAML settings in training/ingest/gate sections (e.g. a file of "
                          "recipes/); the flags below override it")
    # Settings default to None here: their defaults live once, in the config classes.
    run.add_argument("--backbone", help="efficientnet_lite0 (default), vgg16, ... (README), "
                                        "or hub:DIR for a TF-Hub feature-vector SavedModel")
    run.add_argument("--weights",
                     help="'imagenet' (default), 'package', 'none', or a local weights file")
    run.add_argument("--epochs", type=int)
    run.add_argument("--image-size", type=int, help="default: the backbone's")
    run.add_argument("--batch-size", type=int)
    run.add_argument("--learning-rate", type=float)
    run.add_argument("--feature-engine",
                     help="what runs the frozen backbone once for cached training: 'auto' "
                          "(default: TFLite's XNNPACK on CPU-only hosts), 'tensorflow', 'tflite'")
    run.add_argument("--max-image-pixels", type=int, metavar="N",
                     help="pixel budget of one served image: the model refuses an image "
                          "declaring more (default 40000000)")
    run.add_argument("--tflite", action="store_true", default=None,
                     help="also export a TFLite model beside the SavedModel, checked to agree")
    run.add_argument("--no-warm-start", dest="warm_start", action="store_const", const=False,
                     help="train from scratch, not from the last blessed model's weights")
    run.add_argument("--min-accuracy", type=float, help="absolute blessing bound")
    run.add_argument("--max-accuracy-drop", type=float,
                     help="largest accepted accuracy drop against the last blessed model")
    run.add_argument("--min-class-recall", type=float,
                     help="blessing bound on every class's recall (default 0: off)")
    run.add_argument("--accuracy-top-k", type=int,
                     help="k of the reported top-k accuracy (default 5; shown with > k classes)")
    run.add_argument("--keep-versions", type=int,
                     help="pushed versions kept under the serving dir (default 5)")
    run.add_argument("--eval-percent", type=int, help="eval share when the folder is not split")
    run.add_argument("--test-percent", type=int,
                     help="test share (for reporting) when the folder is not split; default 0")
    run.add_argument("--min-images-per-class", type=int)
    run.add_argument("--span", type=int,
                     help="with span-N folders: the span to ingest (default latest)")
    run.add_argument("--span-window", type=int,
                     help="with span-N folders: train on the last N spans ingested (default 1)")
    run.add_argument("--min-examples", type=int, help="data gate: fewest examples to train on")
    run.add_argument("--max-label-drift", type=float,
                     help="data gate: largest L-infinity label drift from the previous span")
    run.add_argument("--beam-arg", action="append", default=None, metavar="ARG",
                     help="Beam pipeline argument, repeatable "
                          "(e.g. --beam-arg=--runner=FlinkRunner)")
    run.add_argument("--verbose", action="store_true", help="show TFX, Beam and TF logs")


def _add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser("predict", help="classify images with a pushed model")
    predict.set_defaults(handler=_predict)
    predict.add_argument("--model", required=True,
                         help="a serving dir (its one model), a model dir (its newest version), "
                              "a version dir or a SavedModel")
    predict.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    predict.add_argument("--top-k", type=int, default=1, help="show the k best classes (default 1)")
    predict.add_argument("--json", action="store_true", help="print a JSON list")
    predict.add_argument("--verbose", action="store_true")


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
    report.add_argument("--verbose", action="store_true")


def _run(args: argparse.Namespace) -> int:
    from components.config import GateConfig, IngestConfig
    from components.image_folder_example_gen import IngestionError, precheck_data_root
    from pipeline import local_runner
    from trainer.config import TrainingConfig

    try:
        sections = _read_config_file(args.config) if args.config else {}
        training_values = _with_export_flags(args, sections.get("training"))
        training = _config_from_flags(TrainingConfig, args, training_values).validate()
        ingest = _config_from_flags(IngestConfig, args, sections.get("ingest")).validate()
        gate = _config_from_flags(GateConfig, args, sections.get("gate")).validate()
        precheck_data_root(args.data, span=ingest.span)
    except (ValueError, IngestionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    started = time.monotonic()
    try:
        summary = local_runner.run_local(
            data_root=args.data, workdir=args.workdir, model_name=args.model_name,
            training=training, ingest=ingest, gate=gate,
            beam_pipeline_args=args.beam_arg or local_runner.DEFAULT_BEAM_ARGS,
        )
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
    from components.image_folder_example_gen import IngestionError

    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (DataGateError, IngestionError)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _read_config_file(path: str) -> dict[str, dict]:
    """The training, ingest and gate sections of a --config file (a kubeflow section,
    read by `transferline compile`, may be there too)."""
    from components.config import GateConfig, IngestConfig
    from trainer.config import TrainingConfig
    from trainer.config_file import read_config_file

    sections = {"training": TrainingConfig, "ingest": IngestConfig, "gate": GateConfig}
    return read_config_file(path, sections, ignored_sections=("kubeflow",))


def _config_from_flags(config_class: type, args: argparse.Namespace, file_values=None):
    """`config_class` from the config file's values with the flags the user gave on
    top; the class's defaults for the rest."""
    from trainer.config_file import build_config

    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_class)
        if getattr(args, field.name, None) is not None
    }
    return build_config(config_class, {**(file_values or {}), **given})


_EXPORT_FLAGS = ("max_image_pixels", "tflite")
"""Flags that set `training.export` settings of the same name."""


def _with_export_flags(args: argparse.Namespace, training_values: dict | None) -> dict | None:
    """The config file's training settings with the export flags given on top."""
    given = {
        name: getattr(args, name)
        for name in _EXPORT_FLAGS
        if getattr(args, name, None) is not None
    }
    if not given:
        return training_values
    values = dict(training_values or {})
    values["export"] = {**(values.get("export") or {}), **given}
    return values


def _one_line(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


def _print_run_report(summary: dict, args: argparse.Namespace, seconds: float) -> None:
    from pipeline.evaluation import failing_checks
    from pipeline.local_runner import SUMMARY_FILE

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
    from components import image_files

    for found in image_files.walk_image_folder(data_root):
        if image_files.ignore_reason(found.relative_path) is None:
            return found.path
    return None


def _predict(args: argparse.Namespace) -> int:
    from pipeline.predict import predict_files

    try:
        predictions = predict_files(args.model, args.images, top_k=args.top_k)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps([p.to_json() for p in predictions], indent=2))
    else:
        for p in predictions:
            if p.error:
                result = f"error: {p.error}"
            else:
                result = "\t".join(f"{label}\t{score:.4f}" for label, score in p.top_k)
            print(f"{p.path}\t{result}")
    return 1 if any(p.error for p in predictions) else 0


def _report(args: argparse.Namespace) -> int:
    from pipeline import report, report_data

    limit = {} if args.max_images is None else {"max_misclassified": args.max_images}
    try:
        written = report.write_report(args.workdir, args.output, run_name=args.run_name, **limit)
    except report_data.ReportError as error:
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `transferline` command."""
    parser = argparse.ArgumentParser(prog="transferline", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(subparsers)
    _add_predict_parser(subparsers)
    _add_report_parser(subparsers)
    from pipeline import kubeflow_cli, scan  # argparse only: --help stays fast

    scan.register(subparsers)
    kubeflow_cli.register(subparsers)
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "verbose", False))
    sys.unraisablehook = _ignore_tf_shutdown_noise
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
