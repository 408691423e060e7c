"""One tiny pipeline run, shared by the end-to-end tests that only read what it left.

`transferline run` once on a small pre-split folder (LocalDagRunner, real TFX, Beam
and ML Metadata, EfficientNet-Lite0's real weights at 32 px, a head search of
`TUNE_TRIALS` trials), then `transferline
report`, then the same run again (served from ML Metadata's cache). What each
command printed and wrote, and what ML Metadata recorded after each run (read with
its own API, `tests.mlmd_testing`), is kept for the tests.

The folder: train/ and val/ of three colour classes (6 and 2 images each), one red
image filed under val/green/ (so even a good model makes a mistake the report must
show), an empty file (skipped) and a text file (ignored).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import pathlib

from pipeline import cli
from tests import mlmd_testing
from tests.conftest import CLASS_COLOURS, encode, make_image, write_class_folder

TRAIN_PER_CLASS = 6
EVAL_PER_CLASS = 2
PLANTED = "val/green/planted_red.png"  # a red image under the wrong label
SKIPPED = "train/red/empty.jpg"
IGNORED = "train/green/notes.txt"
MIN_ACCURACY = 0.6
IMAGE_SIZE = 32
TUNE_TRIALS = 3


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one command printed, and after a run what it wrote and ML Metadata recorded."""

    status: int
    printed: str
    summary: dict
    nodes: dict[str, mlmd_testing.Node]


@dataclasses.dataclass(frozen=True)
class SharedRun:
    data: pathlib.Path
    workdir: pathlib.Path
    first: Outcome
    report_html: pathlib.Path
    report: Outcome
    rerun: Outcome


def write_folder(root: pathlib.Path) -> pathlib.Path:
    write_class_folder(root / "train", per_class=TRAIN_PER_CLASS)
    write_class_folder(root / "val", per_class=EVAL_PER_CLASS, seed_offset=500)
    (root / PLANTED).write_bytes(encode(make_image(CLASS_COLOURS["red"], seed=777)))
    (root / SKIPPED).write_bytes(b"")
    (root / IGNORED).write_text("not an image")
    return root


def _command(argv: list[str], workdir: pathlib.Path | None) -> Outcome:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(argv)
    if workdir is None:
        return Outcome(status, printed.getvalue(), {}, {})
    return Outcome(
        status,
        printed.getvalue(),
        json.loads((workdir / "run_summary.json").read_text()),
        mlmd_testing.latest_run(workdir),
    )


def run(root: pathlib.Path) -> SharedRun:
    data, workdir = write_folder(root / "images"), root / "work"
    argv = [
        "run", "--data", str(data), "--workdir", str(workdir), "--epochs", "10",
        "--learning-rate", "0.01", "--image-size", str(IMAGE_SIZE),
        "--min-accuracy", str(MIN_ACCURACY), "--tune", "--tune-trials", str(TUNE_TRIALS),
    ]
    first = _command(argv, workdir)
    assert first.status == 0, first.printed
    report_html = root / "out" / "report.html"
    report = _command(["report", "--workdir", str(workdir), "--output", str(report_html)], None)
    assert report.status == 0, report.printed
    rerun = _command(argv, workdir)
    assert rerun.status == 0, rerun.printed
    return SharedRun(data, workdir, first, report_html, report, rerun)
