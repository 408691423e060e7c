"""The one progress reporter of the `transferline` commands.

Each step (a pipeline node, a scan, a batch of predictions) gets one line:

* on a terminal, a tqdm line updated in place: the count out of the total
  where it is known, the rate and the time left, or the time elapsed where no
  count is knowable (Transform's analysis, the Evaluator);
* when the output is piped or in CI, plain lines, at most one every
  `PLAIN_INTERVAL_SECONDS` per step (a "still running" heartbeat when nothing
  was counted), and the step's last count when it ends, so logs stay readable;
* with `--quiet`, nothing: the command prints only its final summary.

Pipeline steps report through absl logging (`StepLogHandler` reads TFX's
"Component ... is running/finished" records and the `trainer.progress_events`
events that executors attach to theirs); the commands' own work calls
`Reporter.start`/`update`/`finish` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from trainer.progress_events import EVENT_ATTRIBUTE, Progress

PLAIN_INTERVAL_SECONDS = 10.0
"""Least time between two plain lines of one step."""
_TICK_SECONDS = 1.0
_REDRAW_SECONDS = 0.2
"""Least time between two redraws of a live line (a scan counts every file)."""
_RUNNING = "Component %s is running."
_FINISHED = "Component %s is finished."


class Mode(enum.Enum):
    """How progress is shown."""

    LIVE = "live"  # A terminal: a line per step, updated in place.
    PLAIN = "plain"  # Piped or CI: plain lines, at most every PLAIN_INTERVAL_SECONDS.
    QUIET = "quiet"  # Nothing but the command's final summary.


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """`--quiet` and `--verbose`, the same on every command that reports progress."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true",
                       help="print only the final summary, no progress")
    group.add_argument("--verbose", action="store_true",
                       help="show TFX, Beam and TF logs (and Keras' own epoch lines)")


def mode_for(args: argparse.Namespace, stream: TextIO) -> Mode:
    """QUIET with --quiet; LIVE when `stream` is a terminal; PLAIN otherwise."""
    if getattr(args, "quiet", False):
        return Mode.QUIET
    isatty = getattr(stream, "isatty", None)
    return Mode.LIVE if isatty is not None and isatty() else Mode.PLAIN


def _clock_time() -> str:
    return time.strftime("%H:%M:%S")


def _duration(seconds: float) -> str:
    """'42s', '3m05s', '1h02m'."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclasses.dataclass
class _Step:
    """What is known of one running step."""

    name: str
    started: float
    event: Progress | None = None
    event_at: float = 0.0
    phase_started: float = 0.0
    phase_done: int = 0
    printed_at: float = 0.0
    drawn_at: float = -_REDRAW_SECONDS
    pending: bool = False
    announced: bool = True
    bar: object | None = None


def progress_line(event: Progress, seconds_in_phase: float, done_before: int = 0) -> str:
    """An event with its rate and time left.

    E.g. 'hashed 40 of 100 files (40%), 8.0 files/s, 8s left'.

    Args:
        event: The latest count.
        seconds_in_phase: Seconds from the count the rate starts at to this one.
        done_before: That first count.
    """
    text = f"{event.phase} {event.done}"
    if event.total is not None:
        percent = 100 * event.done // event.total if event.total else 100
        text += f" of {event.total} {event.unit} ({percent}%)"
    else:
        text += f" {event.unit}"
    if seconds_in_phase > 0 and event.done > done_before:
        rate = (event.done - done_before) / seconds_in_phase
        text += f", {rate:.1f} {event.unit}/s"
        if event.total is not None and event.done < event.total:
            text += f", {_duration((event.total - event.done) / rate)} left"
    return f"{text}: {event.detail}" if event.detail else text


def _step_line(step: _Step) -> str:
    return progress_line(step.event, step.event_at - step.phase_started, step.phase_done)


class Reporter:
    """Shows the progress of steps in one `Mode`; safe to call from any thread.

    Args:
        mode: How to show it.
        stream: Where (stdout for `run`, stderr where stdout carries results).
        clock: Seconds, monotonic (tests pass their own).
        interval: Least seconds between two plain lines of one step.
    """

    def __init__(self, mode: Mode, stream: TextIO, clock: Callable[[], float] = time.monotonic,
                 interval: float = PLAIN_INTERVAL_SECONDS) -> None:
        self.mode = mode
        self._stream = stream
        self._clock = clock
        self._interval = interval
        self._steps: dict[str, _Step] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ events

    def start(self, name: str, announce: bool = True) -> None:
        """A step started; `announce` prints a plain "started" line for it."""
        with self._lock:
            now = self._clock()
            step = _Step(name, started=now, phase_started=now, printed_at=now, announced=announce)
            self._steps[name] = step
            if self.mode is Mode.PLAIN and announce:
                self._print(f"[{_clock_time()}] {name} started")
            elif self.mode is Mode.LIVE:
                step.bar = self._new_bar(name)

    def update(self, event: Progress, name: str | None = None) -> None:
        """Step `name` (default: the latest started) got as far as `event`."""
        with self._lock:
            step = self._step(name)
            if step is None:
                return
            now = self._clock()
            if step.event is None:  # The rate counts from here: setup is not work done.
                step.phase_started, step.phase_done = now, event.done
            elif step.event.phase != event.phase:  # It began after the old phase's last count.
                step.phase_started, step.phase_done = step.event_at, 0
            step.event, step.event_at = event, now
            if self.mode is Mode.PLAIN:
                step.pending = True
                if now - step.printed_at >= self._interval:
                    self._print_event(step, now)
            elif self.mode is Mode.LIVE and now - step.drawn_at >= _REDRAW_SECONDS:
                self._draw(step, now)

    def finish(self, name: str | None = None, failed: bool = False) -> None:
        """A step ended: its last count (if not printed yet) and how long it took."""
        with self._lock:
            step = self._step(name)
            if step is None:
                return
            del self._steps[step.name]
            now = self._clock()
            if step.bar is not None:
                step.bar.close()
            if self.mode is Mode.QUIET or (failed and not step.announced):
                return
            if self.mode is Mode.PLAIN and step.pending:
                self._print_event(step, now)
            ended = "failed after" if failed else "finished in"
            last = ""
            if self.mode is Mode.LIVE and step.event is not None:
                last = f" ({_step_line(step)})"
            self._print(f"[{_clock_time()}] {step.name} {ended} {now - step.started:.1f}s{last}")

    def finish_all(self, failed: bool) -> None:
        """Ends every step still running (the command stopped)."""
        with self._lock:
            for name in list(self._steps):
                self.finish(name, failed=failed)

    def tick(self) -> None:
        """Once a second: a heartbeat line for plain steps silent for the interval; redraws."""
        with self._lock:
            now = self._clock()
            for step in list(self._steps.values()):
                if self.mode is Mode.LIVE:
                    self._draw(step, now)
                elif self.mode is Mode.PLAIN and now - step.printed_at >= self._interval:
                    if step.pending:
                        self._print_event(step, now)
                    else:
                        elapsed = _duration(now - step.started)
                        self._print(f"[{_clock_time()}] {step.name}: still running, "
                                    f"{elapsed} elapsed")
                        step.printed_at = now

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Callable[[Progress], None]]:
        """`with reporter.step("scan") as update: update(Progress(...))`; finishes it after.

        A command's own step: no "started" line, and none when it fails (the
        command prints its one-line error).
        """
        self.start(name, announce=False)
        failed = True
        try:
            yield lambda event: self.update(event, name)
            failed = False
        finally:
            self.finish(name, failed=failed)

    # ---------------------------------------------------------------- drawing

    def _step(self, name: str | None) -> _Step | None:
        if name is not None:
            return self._steps.get(name)
        return next(reversed(self._steps.values()), None)

    def _print(self, line: str) -> None:
        if self.mode is Mode.LIVE:  # Above the live lines, which tqdm then redraws.
            from tqdm import tqdm

            tqdm.write(line, file=self._stream)
        else:
            print(line, file=self._stream, flush=True)

    def _print_event(self, step: _Step, now: float) -> None:
        self._print(f"[{_clock_time()}] {step.name}: {_step_line(step)}")
        step.printed_at, step.pending = now, False

    def _new_bar(self, name: str):
        from tqdm import tqdm

        return tqdm(total=None, desc=f"[{_clock_time()}] {name}", file=self._stream, leave=False,
                    bar_format="{desc}: running, 0s elapsed", dynamic_ncols=True, mininterval=0)

    def _draw(self, step: _Step, now: float) -> None:
        elapsed = _duration(now - step.started)
        if step.event is None:
            step.bar.bar_format = f"{{desc}}: running, {elapsed} elapsed"
        else:
            line = _step_line(step).replace("{", "{{")
            step.bar.bar_format = "{desc}: " + line.replace("}", "}}") + f" [{elapsed}]"
        step.bar.refresh()
        step.drawn_at = now


class Ticker:
    """Calls `reporter.tick()` every second from a daemon thread, while in its `with`."""

    def __init__(self, reporter: Reporter, seconds: float = _TICK_SECONDS) -> None:
        self._reporter = reporter
        self._seconds = seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-ticker", daemon=True)

    def _run(self) -> None:
        while not self._stopped.wait(self._seconds):
            self._reporter.tick()

    def __enter__(self) -> Ticker:
        if self._reporter.mode is not Mode.QUIET:
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()


class StepLogHandler(logging.Handler):
    """Turns pipeline log records into the reporter's steps and counts.

    TFX's "Component X is running/finished" start and end a step; a record
    carrying a `Progress` event (`trainer.progress_events.report`) updates the
    step that runs (LocalDagRunner runs one at a time).
    """

    def __init__(self, reporter: Reporter) -> None:
        super().__init__(level=logging.INFO)
        self._reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, EVENT_ATTRIBUTE, None)
        if event is not None:
            self._reporter.update(event)
        elif record.msg == _RUNNING:
            self._reporter.start(record.args[0])
        elif record.msg == _FINISHED:
            self._reporter.finish(record.args[0])


@contextlib.contextmanager
def pipeline_steps(reporter: Reporter) -> Iterator[Reporter]:
    """Shows the pipeline's steps (from absl logging) on `reporter` while in the `with`."""
    handler = StepLogHandler(reporter)
    absl_logger = logging.getLogger("absl")
    absl_logger.addHandler(handler)
    failed = True
    try:
        with Ticker(reporter):
            yield reporter
        failed = False
    finally:
        absl_logger.removeHandler(handler)
        reporter.finish_all(failed=failed)


def reporter_for(args: argparse.Namespace, stream: TextIO | None = None) -> Reporter:
    """The reporter a command's flags ask for, on `stream` (default: stderr).

    stderr by default, since stdout carries results (predictions, `scan --json`).
    """
    stream = sys.stderr if stream is None else stream
    return Reporter(mode_for(args, stream), stream)
