"""Walking an image folder, and the path rules that ignore a file without reading it.

The folder layout is ``<root>/<label>/.../<image>``: the first path component
below the root is the class label, and images may be nested deeper.

* :func:`walk_image_folder` streams every file below the root as a
  :class:`FoundFile`, in a deterministic order, following symlinks without
  ever looping, and marks a second path to a file already counted.
* :func:`ignore_reason` says from a relative path alone why a file was never
  meant to be an image (hidden and system files, other extensions, files
  outside class folders); :meth:`FoundFile.ignore_reason` adds the rules that
  need the walk (no label, a second path to a file already counted).

Pure Python: ``components/file_outcome.py`` applies these rules inside a Beam
``DoFn`` and in ``transferline scan``. Files are reached through
``components/file_systems.py`` (``os`` for local paths, ``tf.io.gfile`` for
object-store URIs).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable, Iterator

from components import file_systems

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp",
        ".tif", ".tiff", ".ico", ".ppm", ".pgm",
    }
)
"""Lower-case file extensions treated as images; everything else is ignored."""

SYSTEM_NAMES: frozenset[str] = frozenset(
    {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}
)
"""Lower-case names of OS metadata files and folders (matched in any component)."""

_NOT_IN_CLASS_FOLDER = "ignored: not inside a class folder"


@dataclasses.dataclass(frozen=True)
class FoundFile:
    """One file found by :func:`walk_image_folder`.

    Attributes:
        path: Absolute path as found (symlinks not resolved).
        relative_path: POSIX path relative to the walked root.
        label: First path component below the root, or None for files lying
            directly in the root.
        same_file_as: Set by the walk when this path reaches a file (same
            device and inode) already yielded under another, non-ignored
            path; holds that first relative path. :meth:`ignore_reason` then
            ignores this path, so every real file is counted once while every
            path is still accounted for.
        split: The split folder the file was found under (``"train"``,
            ``"eval"``, ...), or ``""`` when the folder is not pre-split.
    """

    path: str
    relative_path: str
    label: str | None
    same_file_as: str | None = None
    split: str = ""

    def ignore_reason(self) -> str | None:
        """Why this file is ignored without being read, or None to read it.

        :func:`ignore_reason` of its relative path first, then: no label (so
        a caller may prefix ``relative_path``, e.g. with a split folder,
        without changing the outcome), then a second path to a file already
        counted (``same_file_as``), told apart as a symlink or a hard link.
        """
        reason = ignore_reason(self.relative_path)
        if reason is None and self.label is None:
            reason = _NOT_IN_CLASS_FOLDER
        if reason is None and self.same_file_as is not None:
            if file_systems.for_path(self.path).islink(self.path):
                reason = f"ignored: symlink to a file already counted ({self.same_file_as})"
            else:
                reason = f"ignored: same file already counted as {self.same_file_as}"
        return reason


# --------------------------------------------------------------------------
# Walking the folder
# --------------------------------------------------------------------------

_OnError = Callable[[OSError], None]


@dataclasses.dataclass
class _WalkState:
    """Bookkeeping local to one :func:`walk_image_folder` call."""

    root: str
    fs: file_systems.FileSystem
    on_error: _OnError | None
    visited_dirs: set[file_systems.FileId] = dataclasses.field(default_factory=set)
    counted_files: dict[file_systems.FileId, str] = dataclasses.field(default_factory=dict)
    pending_links: collections.deque[tuple[str, tuple[str, ...]]] = (
        dataclasses.field(default_factory=collections.deque)
    )


def walk_image_folder(
    root: str, on_error: _OnError | None = None
) -> Iterator[FoundFile]:
    """Streams every file below ``root`` as a :class:`FoundFile`.

    ``root`` is a local path or an object-store URI (``gs://``, ``s3://``,
    ... see ``components/file_systems.py``); the same rules apply to both,
    except that object stores have no symlinks (and so no loops or aliases).

    The order is deterministic and happens in two phases so that real files
    win over links to them:

    1. The physical tree (symlinks not followed) depth-first, entries of each
       folder sorted by name. Symlinks met on the way are queued.
    2. The queued symlinks, in the order found. A link to a folder not yet
       walked is walked the same way (its own links join the queue); a link to
       a folder already walked (a loop, or an alias of a class folder) is not
       descended into, so the walk always ends. A link to a file, and a broken
       link, is yielded like any other file.

    Every file path is yielded exactly once. When a path reaches a real file
    (same device and inode) that was already yielded under a non-ignored path,
    it carries ``same_file_as`` so it is counted as IGNORED
    instead of ingesting the same image twice. Hidden and system folders are
    walked too, so their files are accounted for (as IGNORED).

    Args:
        root: The class root; its direct sub-folders are the labels.
        on_error: Called with the ``OSError`` when a folder cannot be listed;
            the walk then goes on without it. By default the error is raised,
            because files that cannot be seen cannot be accounted for.

    Yields:
        One :class:`FoundFile` per file path, never holding file contents.

    Raises:
        OSError: If a folder cannot be listed and ``on_error`` is None.
    """
    fs = file_systems.for_path(root)
    state = _WalkState(root=fs.absolute(root), fs=fs, on_error=on_error)
    root_id = fs.file_id(state.root, follow_symlinks=True)
    if root_id is not None:
        state.visited_dirs.add(root_id)
    yield from _walk_physical(state, state.root, ())
    while state.pending_links:
        path, parts = state.pending_links.popleft()
        yield from _follow_link(state, path, parts)


def _walk_physical(
    state: _WalkState, top: str, top_parts: tuple[str, ...]
) -> Iterator[FoundFile]:
    """Depth-first walk of real folders below ``top``; queues symlinks."""
    stack = [(top_parts, iter(_sorted_entries(state, top)))]
    while stack:
        parts, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        entry_parts = parts + (entry.name,)
        if entry.is_symlink:
            state.pending_links.append((entry.path, entry_parts))
        elif entry.is_dir:
            dir_id = state.fs.file_id(entry.path, follow_symlinks=False)
            if dir_id is None or dir_id not in state.visited_dirs:
                if dir_id is not None:
                    state.visited_dirs.add(dir_id)
                stack.append((entry_parts, iter(_sorted_entries(state, entry.path))))
        else:
            yield _found(state, entry.path, entry_parts, follow_symlinks=False)


def _follow_link(
    state: _WalkState, path: str, parts: tuple[str, ...]
) -> Iterator[FoundFile]:
    """Handles one queued symlink: walks a new folder or yields a file."""
    try:
        is_folder, dir_id = state.fs.is_folder_target(path)
    except OSError:  # A broken link: reading it reports it as unreadable.
        yield _found(state, path, parts, follow_symlinks=True)
        return
    if not is_folder:
        yield _found(state, path, parts, follow_symlinks=True)
        return
    if dir_id in state.visited_dirs:
        return  # A loop or an alias of a folder already walked.
    state.visited_dirs.add(dir_id)
    yield from _walk_physical(state, path, parts)


def _sorted_entries(state: _WalkState, path: str) -> list[file_systems.Entry]:
    """Lists one folder sorted by name (entries only, never contents)."""
    try:
        return state.fs.scandir(path)
    except OSError as error:
        if state.on_error is None:
            raise
        state.on_error(error)
        return []


def _found(
    state: _WalkState, path: str, parts: tuple[str, ...], follow_symlinks: bool
) -> FoundFile:
    """Builds the FoundFile for one path and records its real file."""
    relative_path = "/".join(parts)
    label = parts[0] if len(parts) > 1 else None
    same_file_as = None
    if ignore_reason(relative_path) is None:
        file_id = state.fs.file_id(path, follow_symlinks=follow_symlinks)
        if file_id is not None:
            same_file_as = state.counted_files.get(file_id)
            if same_file_as is None:
                state.counted_files[file_id] = relative_path
    return FoundFile(
        path=path,
        relative_path=relative_path,
        label=label,
        same_file_as=same_file_as,
    )

# --------------------------------------------------------------------------
# Ignoring by path
# --------------------------------------------------------------------------


def ignore_reason(relative_path: str) -> str | None:
    """Says why a path is ignored without being read.

    Checks, in order: OS metadata (``.DS_Store``, ``Thumbs.db``,
    ``desktop.ini``, anything under ``__MACOSX``), hidden components
    (starting with ``.``), non-image extensions, and files lying directly in
    the root rather than in a class folder.

    Args:
        relative_path: POSIX path relative to the class root.

    Returns:
        ``"ignored: system file"``, ``"ignored: hidden file"``,
        ``"ignored: not an image file (.txt)"``,
        ``"ignored: not inside a class folder"``, or None to ingest the file.
    """
    parts = [part for part in relative_path.split("/") if part]
    if any(part.lower() in SYSTEM_NAMES for part in parts):
        return "ignored: system file"
    if any(part.startswith(".") for part in parts):
        return "ignored: hidden file"
    extension = os.path.splitext(parts[-1])[1].lower() if parts else ""
    if extension not in IMAGE_EXTENSIONS:
        shown = extension or "no extension"
        return f"ignored: not an image file ({shown})"
    if len(parts) < 2:
        return _NOT_IN_CLASS_FOLDER
    return None

