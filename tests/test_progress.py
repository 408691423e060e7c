"""Progress: the reporter's three modes, ingestion's Beam counters, and what a run prints."""

import io
import logging
import re

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from components import image_folder_beam
from components.config import IngestConfig
from pipeline import cli, progress, scan
from pipeline.progress import Mode, Reporter
from tests.conftest import write_class_folder
from tests.test_image_folder_example_gen import _run_executor
from trainer import progress_events
from trainer.progress_events import Progress
from trainer.training import epoch_figures

_CLOCK_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] ", re.MULTILINE)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def absl_info():
    """absl's logger at INFO, as `transferline` sets it (and TFX on Kubeflow)."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.INFO)
    yield
    absl_logger.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return _CLOCK_PREFIX.sub("", stream.getvalue()).splitlines()


def test_plain_lines_come_at_most_every_ten_seconds_and_end_on_the_total():
    clock, out = _Clock(), io.StringIO()
    reporter = Reporter(Mode.PLAIN, out, clock=clock)
    reporter.start("Ingest")
    clock.now += 5  # Setup before the first count.
    for second in range(1, 26):
        clock.now += 1
        reporter.update(Progress("hashed", done=4 * second, total=100))
    reporter.finish("Ingest")

    # The rate counts from the first count (4 files at 6 s), not from the start.
    assert _lines(out) == [
        "Ingest started",
        "Ingest: hashed 20 of 100 files (20%), 4.0 files/s, 20s left",
        "Ingest: hashed 60 of 100 files (60%), 4.0 files/s, 10s left",
        "Ingest: hashed 100 of 100 files (100%), 4.0 files/s",
        "Ingest finished in 30.0s",
    ]


def test_a_step_without_counts_gets_a_heartbeat_every_ten_seconds():
    clock, out = _Clock(), io.StringIO()
    reporter = Reporter(Mode.PLAIN, out, clock=clock)
    reporter.start("Transform")
    for _ in range(75):
        clock.now += 1
        reporter.tick()
    reporter.finish("Transform")

    assert _lines(out) == [
        "Transform started",
        "Transform: still running, 10s elapsed",
        "Transform: still running, 20s elapsed",
        "Transform: still running, 30s elapsed",
        "Transform: still running, 40s elapsed",
        "Transform: still running, 50s elapsed",
        "Transform: still running, 1m00s elapsed",
        "Transform: still running, 1m10s elapsed",
        "Transform finished in 75.0s",
    ]


def test_a_new_phase_counts_its_rate_from_where_it_began():
    clock, out = _Clock(), io.StringIO()
    reporter = Reporter(Mode.PLAIN, out, clock=clock, interval=0)
    reporter.start("Ingest")
    clock.now += 20
    reporter.update(Progress("hashed", 100, 100))
    clock.now += 5
    reporter.update(Progress("accounted for", 10, 100))
    clock.now += 5
    reporter.update(Progress("accounted for", 50, 100))

    assert _lines(out)[1:] == [
        "Ingest: hashed 100 of 100 files (100%)",
        "Ingest: accounted for 10 of 100 files (10%), 2.0 files/s, 45s left",
        "Ingest: accounted for 50 of 100 files (50%), 5.0 files/s, 10s left",
    ]


def test_quiet_prints_nothing():
    clock, out = _Clock(), io.StringIO()
    reporter = Reporter(Mode.QUIET, out, clock=clock)
    with reporter.step("scan") as update:
        clock.now += 30
        update(Progress("hashed", 5, 10))
        reporter.tick()
    assert out.getvalue() == ""


def test_a_terminal_gets_one_line_updated_in_place():
    clock, out = _Clock(), _Terminal()
    reporter = Reporter(progress.mode_for(_Args(), out), out, clock=clock)
    with reporter.step("scan") as update:
        for done in (3, 6, 9):
            clock.now += 1
            update(Progress("hashed", done, 9))

    text = out.getvalue()
    assert reporter.mode is Mode.LIVE
    assert "\r" in text
    assert "hashed 6 of 9 files (66%), 3.0 files/s, 1s left" in text
    assert _lines(out)[-1].endswith(
        "scan finished in 3.0s (hashed 9 of 9 files (100%), 3.0 files/s)")
    assert text.count("\n") == 1  # The live line is cleared; only the final one stays.


class _Args:
    quiet = False


def test_mode_follows_the_flags_and_the_stream():
    class Quiet:
        quiet = True

    assert progress.mode_for(Quiet(), _Terminal()) is Mode.QUIET
    assert progress.mode_for(_Args(), _Terminal()) is Mode.LIVE
    assert progress.mode_for(_Args(), io.StringIO()) is Mode.PLAIN


def test_a_failed_pipeline_step_says_so_and_a_failed_command_leaves_its_error_alone():
    clock, out = _Clock(), io.StringIO()
    reporter = Reporter(Mode.PLAIN, out, clock=clock)
    reporter.start("Trainer")
    clock.now += 2
    reporter.finish_all(failed=True)
    with pytest.raises(RuntimeError), reporter.step("predict"):
        clock.now += 2
        raise RuntimeError("boom")
    with reporter.step("scan") as update:
        update(Progress("hashed", 1, 1))
    assert _lines(out) == [
        "Trainer started", "Trainer failed after 2.0s",
        "scan: hashed 1 of 1 files (100%)", "scan finished in 0.0s"]


def test_epoch_figures_put_loss_and_accuracy_first():
    logs = {"val_accuracy": 0.5, "accuracy": 0.75, "val_loss": 0.9, "loss": 0.51234}
    assert epoch_figures(logs) == (
        "loss 0.5123, accuracy 0.7500, val_loss 0.9000, val_accuracy 0.5000")


def test_progress_events_travel_on_absl_records_to_the_reporter(absl_info):
    clock, out = _Clock(), io.StringIO()
    reporter = Reporter(Mode.PLAIN, out, clock=clock, interval=0)
    handler = progress.StepLogHandler(reporter)
    absl_logger = logging.getLogger("absl")
    absl_logger.addHandler(handler)
    try:
        from absl import logging as absl_logging

        absl_logging.info("Component %s is running.", "Trainer")
        clock.now += 4
        progress_events.report(Progress("head", 2, 10, "epochs", detail="loss 0.5000"))
        absl_logging.info("Component %s is finished.", "Trainer")
    finally:
        absl_logger.removeHandler(handler)
    assert _lines(out) == [
        "Trainer started",
        "Trainer: head 2 of 10 epochs (20%): loss 0.5000",
        "Trainer finished in 4.0s",
    ]


# ------------------------------------------------------------------ ingestion


def test_ingestion_counts_live_in_this_process_and_in_beam_metrics(tmp_path):
    data = write_class_folder(tmp_path / "images", per_class=5)
    (data / "red" / "notes.txt").write_text("not an image")
    options = PipelineOptions(["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | image_folder_beam.AccountForFiles(  # pylint: disable=no-value-for-parameter
        str(data), [("", "*")], IngestConfig(), str(tmp_path / "manifest"),
        progress_token="t1",
    )
    result = pipeline.run()
    result.wait_until_finish()

    expected = {"files_found": 16, "files_hashed": 16, "files_accounted": 16}
    assert image_folder_beam.committed_counts(result) == expected
    assert image_folder_beam.live_counts("t1") == expected
    image_folder_beam.forget_counts("t1")
    assert image_folder_beam.live_counts("t1") == dict.fromkeys(expected, 0)


def test_ingestion_reports_counts_that_reach_the_listed_total(tmp_path, absl_info):
    data = write_class_folder(tmp_path / "images", per_class=6)
    (data / "green" / "empty.png").write_bytes(b"")
    (data / "blue" / ".DS_Store").write_bytes(b"\0")
    clock, out = _Clock(), io.StringIO()
    reporter = Reporter(Mode.PLAIN, out, clock=clock)
    reporter.start("ImageFolderExampleGen")
    handler = progress.StepLogHandler(reporter)
    logging.getLogger("absl").addHandler(handler)
    try:
        _run_executor(data, tmp_path)
    finally:
        logging.getLogger("absl").removeHandler(handler)
    reporter.finish("ImageFolderExampleGen")

    assert _lines(out)[-2:] == [
        "ImageFolderExampleGen: accounted for 20 of 20 files (100%)",
        "ImageFolderExampleGen finished in 0.0s",
    ]


# ------------------------------------------------------------------ a real run


@pytest.mark.e2e
def test_a_piped_run_prints_progress_that_reaches_the_total(shared_run):
    printed = _CLOCK_PREFIX.sub("", shared_run.first.printed)

    # 3 classes x (6 + 2) images, a planted one, an empty file and a text file.
    assert "ImageFolderExampleGen: accounted for 27 of 27 files (100%)" in printed
    epochs = re.findall(r"^Trainer: head (\d+) of 10 epochs \(\d+%\).*: loss \d\.\d{4}, "
                        r"accuracy \d\.\d{4}, val_loss \d\.\d{4}, val_accuracy \d\.\d{4}$",
                        printed, re.MULTILINE)
    assert epochs, printed
    assert "Epoch 1/10" not in printed  # Keras' own lines only with --verbose.
    assert "\r" not in printed


# ------------------------------------------------------------------ scan


def test_scan_counts_reach_the_files_listed_piped_and_nothing_with_quiet(tmp_path, capsys):
    data = write_class_folder(tmp_path / "images", per_class=4)
    (data / "red" / "notes.txt").write_text("not an image")
    events = []
    scan.scan_folder(str(data), workers=1, on_progress=events.append)
    assert events[0] == Progress("listed", 13)
    assert Progress("hashed", 13, 13) in events
    assert events[-1] == Progress("accounted for", 13, 13)

    assert cli.main(["scan", "--workers", "1", str(data)]) == scan.EXIT_OK
    err = _CLOCK_PREFIX.sub("", capsys.readouterr().err)
    assert err.startswith("scan: accounted for 13 of 13 files (100%)")
    assert "\nscan finished in " in err
    assert cli.main(["scan", "--quiet", "--workers", "1", str(data)]) == scan.EXIT_OK
    assert capsys.readouterr().err == ""


def test_the_backbone_pass_counts_up_to_each_split_and_never_back(absl_info):
    from trainer.phases import _FeatureProgress

    clock, out = _Clock(), io.StringIO()
    reporter = Reporter(Mode.PLAIN, out, clock=clock, interval=0)
    handler = progress.StepLogHandler(reporter)
    logging.getLogger("absl").addHandler(handler)
    reporter.start("Trainer")
    try:
        counted = _FeatureProgress({"train": 99, "eval": 21})
        counted.start_split("train")
        counted.on_predict_batch_end(0)
        counted.on_predict_batch_end(1)
        counted.split_done(99)
        counted.start_split("eval")
        counted.on_predict_batch_end(0)
        counted.split_done(21)
    finally:
        logging.getLogger("absl").removeHandler(handler)
    done = [int(re.search(r"features (\d+) of 120", line)[1]) for line in _lines(out)[1:]]
    assert done == [64, 99, 99, 120, 120]
