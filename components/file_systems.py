"""Listing and reading an image folder on local disk or in an object store.

The ingestion rules (`components/folder_walk.py`, `components/file_outcome.py`,
`components/image_folder.py`) reach files only through :func:`for_path`, which
picks one of two file systems by the path alone:

* a local path (no URI scheme) goes through `os`: fast, and it sees what only a
  local disk has, symlinks and (device, inode) identities, which the walk needs
  to never loop and never count a file twice;
* a URI (``gs://``, ``s3://``, ``hdfs://``, ``ram://``, ...) goes through
  `tf.io.gfile`, TensorFlow's file system layer, which TFX's own `fileio` uses
  too. Object stores have no symlinks and no inodes, so those rules have
  nothing to do there; hidden and system files are still told by name.

TensorFlow is imported only when a URI is met, so a local ingestion's Beam
workers stay free of it. Errors from either side are `OSError`s.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from typing import BinaryIO, NamedTuple, Protocol

_URI_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://")

_SLASH_MARKS_FOLDERS: frozenset[str] = frozenset({"gs"})
"""Schemes whose listings end folder names with '/' (TF's GCS file system), so a
name without one is a file and needs no `isdir` request of its own."""

FileId = tuple[int, int]
"""(device, inode) of a local file."""


class Entry(NamedTuple):
    """One entry of a folder listing.

    Attributes:
        name: The entry's name (no trailing '/').
        path: The folder's path joined with `name`.
        is_dir: A folder, not following symlinks.
        is_symlink: A symlink (always False in object stores).
    """

    name: str
    path: str
    is_dir: bool
    is_symlink: bool


class FileState(NamedTuple):
    """What a fingerprint needs to notice that a file changed."""

    size: int
    mtime_ns: int


NOT_A_REGULAR_FILE = "not a regular file"
"""Why a FIFO, a device or a folder given as a file is never opened: every reader says so."""


class NotARegularFile(OSError):
    """The path exists but is not a regular file (a FIFO, a device, a folder)."""


class FileSystem(Protocol):
    """The operations the ingestion rules use; every error is an OSError."""

    def absolute(self, path: str) -> str: ...
    def scandir(self, path: str) -> list[Entry]: ...
    def listdir(self, path: str) -> list[str]: ...
    def isdir(self, path: str) -> bool: ...
    def islink(self, path: str) -> bool: ...
    def file_id(self, path: str, follow_symlinks: bool) -> FileId | None: ...
    def is_folder_target(self, path: str) -> tuple[bool, FileId | None]: ...
    def state(self, path: str) -> FileState: ...
    def open_regular(self, path: str) -> BinaryIO: ...


def for_path(path: str) -> FileSystem:
    """The file system that serves `path`: `os` for local paths, `tf.io.gfile` for URIs."""
    match = _URI_SCHEME.match(path)
    if match is None:
        return LOCAL
    return _GFileSystem(trust_trailing_slash=match.group(1).lower() in _SLASH_MARKS_FOLDERS)


def listdir(path: str) -> list[str]:
    """Entry names of a folder, local or in an object store (no trailing '/')."""
    return for_path(path).listdir(path)


def isdir(path: str) -> bool:
    """Whether `path` is a folder (following symlinks), local or in an object store."""
    return for_path(path).isdir(path)


# ----------------------------------------------------------------------- local


class _LocalFileSystem:
    """Local disk through `os`: symlinks are seen, files have (device, inode)."""

    def absolute(self, path: str) -> str:
        return os.path.abspath(path)

    def scandir(self, path: str) -> list[Entry]:
        with os.scandir(path) as it:
            return sorted(
                (Entry(e.name, e.path, _is_real_dir(e), _is_symlink(e)) for e in it),
                key=lambda entry: entry.name,
            )

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def islink(self, path: str) -> bool:
        return os.path.islink(path)

    def file_id(self, path: str, follow_symlinks: bool) -> FileId | None:
        try:
            info = os.stat(path, follow_symlinks=follow_symlinks)
        except OSError:
            return None
        return (info.st_dev, info.st_ino)

    def is_folder_target(self, path: str) -> tuple[bool, FileId | None]:
        """Whether a symlink leads to a folder, and that folder's id; OSError if broken."""
        info = os.stat(path)
        return stat.S_ISDIR(info.st_mode), (info.st_dev, info.st_ino)

    def state(self, path: str) -> FileState:
        info = os.stat(path)
        return FileState(info.st_size, info.st_mtime_ns)

    def open_regular(self, path: str) -> BinaryIO:
        """Opens a regular file; a FIFO or device is refused before it can block."""
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise NotARegularFile(f"{NOT_A_REGULAR_FILE}: {path}")
        return open(path, "rb")  # noqa: SIM115 (the caller closes it)


def _is_symlink(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


LOCAL: FileSystem = _LocalFileSystem()


# ------------------------------------------------------------------ tf.io.gfile


class _GFileSystem:
    """Any URI TensorFlow's file system layer serves (gs://, s3:// with tensorflow-io, ram://)."""

    def __init__(self, trust_trailing_slash: bool) -> None:
        self._trust_trailing_slash = trust_trailing_slash

    def absolute(self, path: str) -> str:
        return path.rstrip("/") if not path.endswith("://") else path

    def scandir(self, path: str) -> list[Entry]:
        gfile = _gfile()
        names = _as_os_error(path, gfile.listdir, path)
        return entries_from_listing(
            path, names, lambda p: _as_os_error(p, gfile.isdir, p), self._trust_trailing_slash
        )

    def listdir(self, path: str) -> list[str]:
        return [name.rstrip("/") for name in _as_os_error(path, _gfile().listdir, path)]

    def isdir(self, path: str) -> bool:
        return _as_os_error(path, _gfile().isdir, path)

    def islink(self, path: str) -> bool:  # noqa: ARG002
        return False

    def file_id(self, path: str, follow_symlinks: bool) -> FileId | None:  # noqa: ARG002
        return None

    def is_folder_target(self, path: str) -> tuple[bool, FileId | None]:
        return self.isdir(path), None

    def state(self, path: str) -> FileState:
        info = _as_os_error(path, _gfile().stat, path)
        return FileState(int(info.length), int(info.mtime_nsec))

    def open_regular(self, path: str) -> BinaryIO:
        """Opens an object; a missing one fails at the first read, as an OSError."""
        handle = _as_os_error(path, _gfile().GFile, path, "rb")
        return _GFileReader(path, handle)  # type: ignore[return-value]


def entries_from_listing(
    folder: str,
    names: Iterable[str],
    isdir: Callable[[str], bool],
    trust_trailing_slash: bool,
) -> list[Entry]:
    """Entries of an object-store listing, sorted by name.

    A name ending in '/' is a folder. With `trust_trailing_slash` (the file
    system marks every folder so), any other name is a file; otherwise `isdir`
    is asked, one request per name.
    """
    entries = []
    for name in names:
        bare = name.rstrip("/")
        path = f"{folder.rstrip('/')}/{bare}"
        is_dir = name.endswith("/") or (not trust_trailing_slash and isdir(path))
        entries.append(Entry(bare, path, is_dir, False))
    return sorted(entries, key=lambda entry: entry.name)


class _GFileReader:
    """A GFile whose read errors are OSErrors, like a local file's."""

    def __init__(self, path: str, handle) -> None:
        self._path = path
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        return _as_os_error(self._path, self._handle.read, size)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> _GFileReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _gfile():
    """tf.io.gfile, imported on first use (only URIs need TensorFlow)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return tf.io.gfile


def _as_os_error(path: str, function, *args):
    """Calls a tf.io.gfile function on `path`, turning TensorFlow's errors into OSErrors."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        return function(*args)
    except tf.errors.NotFoundError as error:
        raise FileNotFoundError(f"{error.message or 'not found'}: {path}") from error
    except tf.errors.PermissionDeniedError as error:
        raise PermissionError(f"{error.message or 'permission denied'}: {path}") from error
    except tf.errors.OpError as error:
        raise OSError(f"{type(error).__name__}: {error.message}: {path}") from error
