"""One run per work directory: an exclusive `fcntl.flock` on `<workdir>/run.lock`.

The kernel releases the lock when its holder exits, however it exits (kill -9
included), so a lock never outlives its run and needs no clean-up. The holder
writes its pid, host and start time into the file so that a second run can say
who holds the workdir. The file itself stays: removing it would let two
processes lock two different files of the same name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator

LOCK_FILE = "run.lock"
_HOLDER_WRITE_WAIT_S = 1.0  # a new holder writes its details right after locking


class WorkdirBusyError(RuntimeError):
    """Another process holds the work directory (one line names it)."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a workdir's lock."""

    pid: int
    host: str
    since: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.since}"


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[Holder]:
    """Holds `workdir`'s lock for the block; the workdir must exist.

    Yields:
        This process as the holder.

    Raises:
        WorkdirBusyError: Another process holds it.
    """
    path = os.path.join(workdir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusyError(_busy_message(workdir, path)) from None
        holder = Holder(
            os.getpid(), socket.gethostname(), datetime.datetime.now().isoformat(timespec="seconds")
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dataclasses.asdict(holder)).encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the lock


def check_free(workdir: str) -> None:
    """Fails at once if a run holds `workdir` now (a cheap probe before any work starts).

    The run itself still takes the lock with `hold`: this only lets a command
    refuse a busy workdir before it loads TensorFlow.

    Raises:
        WorkdirBusyError: Another process holds it.
    """
    path = os.path.join(workdir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # No lock file (or no workdir yet): nobody holds it.
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusyError(_busy_message(workdir, path)) from None
    finally:
        os.close(fd)


def read_holder(workdir: str) -> Holder | None:
    """The holder recorded in `workdir`'s lock file; None if none is recorded."""
    try:
        with open(os.path.join(workdir, LOCK_FILE)) as f:
            return Holder(**json.loads(f.read()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _busy_message(workdir: str, path: str) -> str:
    deadline = time.monotonic() + _HOLDER_WRITE_WAIT_S
    holder = read_holder(workdir)
    while holder is None and time.monotonic() < deadline:
        time.sleep(0.05)
        holder = read_holder(workdir)
    who = holder.describe() if holder else f"holder not recorded in {path}"
    return f"workdir {workdir} is in use by transferline run ({who})"
