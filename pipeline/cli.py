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


def _add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the pipeline locally on an image folder")
    run.set_defaults(handler=_run)
    run.add_argument("--data", required=True, help="image folder: one subfolder per class")
    run.add_argument("--workdir", required=True, help="artifacts, ML Metadata and pushed models")
    run.add_argument("--model-name", default="transferline", help="name under the serving dir")
    # Settings default to None here: their defaults live once, in the config classes.
    run.add_argument("--backbone", help="efficientnet_lite0 (default) or mobilenet_v2")
    run.add_argument("--weights", help="'imagenet' (default), 'none', or a local weights file")
    run.add_argument("--epochs", type=int)
    run.add_argument("--image-size", type=int, help="default: the backbone's")
    run.add_argument("--batch-size", type=int)
    run.add_argument("--learning-rate", type=float)
    run.add_argument("--min-accuracy", type=float, help="absolute blessing bound")
    run.add_argument("--max-accuracy-drop", type=float,
                     help="largest accepted accuracy drop against the last blessed model")
    run.add_argument("--eval-percent", type=int, help="eval share when the folder is not split")
    run.add_argument("--min-images-per-class", type=int)
    run.add_argument("--beam-arg", action="append", default=None, metavar="ARG",
                     help="Beam pipeline argument, repeatable (e.g. --beam-arg=--runner=FlinkRunner)")
    run.add_argument("--verbose", action="store_true", help="show TFX, Beam and TF logs")


def _add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser("predict", help="classify images with a pushed model")
    predict.set_defaults(handler=_predict)
    predict.add_argument("--model", required=True, help="a version dir or the model dir (newest version)")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--json", action="store_true", help="print a JSON list")
    predict.add_argument("--verbose", action="store_true")


def _run(args: argparse.Namespace) -> int:
    from components.image_folder_example_gen import IngestionError, precheck_data_root
    from pipeline import local_runner
    from pipeline.config import GateConfig, IngestConfig
    from trainer.config import TrainingConfig

    try:
        training = _config_from_flags(TrainingConfig, args).validate()
        ingest = _config_from_flags(IngestConfig, args).validate()
        gate = _config_from_flags(GateConfig, args).validate()
        precheck_data_root(args.data)
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
        if args.verbose:
            raise
        print(f"error: pipeline failed: {_one_line(error)}", file=sys.stderr)
        return EXIT_PIPELINE_FAILED
    _print_run_report(summary, args, time.monotonic() - started)
    return 0


def _config_from_flags(config_class: type, args: argparse.Namespace):
    """`config_class` with the flags the user gave; the class's defaults for the rest."""
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_class)
        if getattr(args, field.name, None) is not None
    }
    return config_class(**given)


def _one_line(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


def _print_run_report(summary: dict, args: argparse.Namespace, seconds: float) -> None:
    from pipeline.local_runner import SUMMARY_FILE

    examples = summary["examples"]
    accuracy = summary["metrics"].get("accuracy")
    print()
    print(f"Pipeline finished in {seconds:.0f}s")
    print(f"  images:     {', '.join(f'{split} {n}' for split, n in sorted(examples.items()))}"
          f" ({len(summary['classes'])} classes)")
    print(f"  skipped:    {len(summary['skipped'])} files (details in {SUMMARY_FILE})")
    print(f"  accuracy:   {accuracy:.4f} (eval split)" if accuracy is not None else "  accuracy:   n/a")
    print(f"  blessed:    {'yes' if summary['blessed'] else 'no'}")
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
        print(f"  transferline predict --model {model_dir} {example or 'IMAGE...'}")


def _any_image(data_root: str) -> str | None:
    from components import image_files

    for found in image_files.walk_image_folder(data_root):
        if image_files.ignore_reason(found.relative_path) is None:
            return found.path
    return None


def _predict(args: argparse.Namespace) -> int:
    from pipeline.predict import predict_files

    try:
        predictions = predict_files(args.model, args.images)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps([dataclasses.asdict(p) for p in predictions], indent=2))
    else:
        for p in predictions:
            result = f"error: {p.error}" if p.error else f"{p.label}\t{p.score:.4f}"
            print(f"{p.path}\t{result}")
    return 1 if any(p.error for p in predictions) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `transferline` command."""
    parser = argparse.ArgumentParser(prog="transferline", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(subparsers)
    _add_predict_parser(subparsers)
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "verbose", False))
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
