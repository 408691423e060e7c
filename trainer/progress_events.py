"""Progress events: how work below `pipeline/` says how far it has got.

A step's code (an executor, the Trainer) reports an event through absl logging,
the channel TFX executors already write to, with the event attached to the log
record. Where nobody draws progress (Kubeflow, `--verbose`) it is one readable
log line; `transferline` (`pipeline/progress.py`) takes the event off the record
and draws it: a line updated in place on a terminal, a plain line at most every
10 s when piped. Pure Python, no TensorFlow: Beam workers may import it.
"""

from __future__ import annotations

import dataclasses

from absl import logging

EVENT_ATTRIBUTE = "transferline_progress"
"""The log record attribute that carries a `Progress` event."""

_raw_library_progress = False


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far one phase of a step has got.

    Attributes:
        phase: What the step is doing ("hashing", "head", ...).
        done: Units done so far in this phase.
        total: Units in the phase, or None when unknown.
        unit: What is counted ("files", "epochs", "images").
        detail: Figures to show beside the count (an epoch's loss and accuracy).
    """

    phase: str
    done: int
    total: int | None = None
    unit: str = "files"
    detail: str = ""

    def message(self) -> str:
        """The event as one plain sentence, e.g. 'hashing 40 of 100 files'."""
        count = f"{self.done}" if self.total is None else f"{self.done} of {self.total}"
        text = f"{self.phase} {count} {self.unit}"
        return f"{text}: {self.detail}" if self.detail else text


def report(event: Progress) -> None:
    """Logs `event` at INFO, the event itself attached to the record."""
    logging.info("progress: %s", event.message(), extra={EVENT_ATTRIBUTE: event})


def show_raw_library_progress(show: bool) -> None:
    """Lets libraries print their own progress too (Keras' epoch lines): `--verbose`."""
    global _raw_library_progress  # noqa: PLW0603 (one switch for the process, set by the CLI)
    _raw_library_progress = show


def keras_verbosity() -> int:
    """Keras' `verbose` for fit: its one-line-per-epoch output only when asked for."""
    return 2 if _raw_library_progress else 0
