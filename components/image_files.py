"""Rules by which ImageFolderExampleGen accounts for every file in an image folder.

Transferline turns a folder of labelled images into a served classifier. The
folder layout is ``<root>/<label>/.../<image>``: the first path component
below the root is the class label, and images may be nested deeper.

This module is pure Python (Pillow + numpy) so the Beam-based component can
call it inside a ``DoFn``, one file at a time. Files are reached through
``components/file_systems.py``: local paths with ``os``, object-store URIs
(``gs://``, ``s3://``, ...) with ``tf.io.gfile``, imported only for those.

* :func:`walk_image_folder` streams every file below the root as a
  :class:`FoundFile`, in a deterministic order, following symlinks without
  ever looping.
* :func:`ingest_file` turns one :class:`FoundFile` into an
  :class:`IngestedFile` whose :class:`FileStatus` says what happened:

  - ``KEPT``: the original bytes are already an 8-bit RGB JPEG or PNG that
    TensorFlow's ``tf.io.decode_image`` reads exactly as Pillow does, so they
    are passed through byte-for-byte.
  - ``CONVERTED``: the image was usable but had to be changed (orientation,
    colour mode, bit depth, alpha, animation, container format, size); the
    reason lists every change.
  - ``SKIPPED``: the file looks like it was meant to be an image but cannot
    be used (empty, truncated, not really an image, decompression bomb,
    unreadable).
  - ``IGNORED``: the file was never meant to be an image (hidden and system
    files, other extensions, files outside class folders) or is a second path
    to a file already counted. Ignored files are not read.
  - ``DUPLICATE``: not produced here, because it needs every file's hash;
    the component marks later files with an already-seen ``content_hash``.

No function here raises for a bad file, and no module-level state is ever
changed (in particular ``PIL.Image.MAX_IMAGE_PIXELS`` is left alone, see
:func:`normalize_image`).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
import io
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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

PILLOW_FORMATS: tuple[str, ...] = (
    "JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "ICO", "PPM",
)
"""The only Pillow decoders ever tried (MPO is reached through "JPEG").

Restricting the decoders keeps Pillow from handing a renamed file to a plugin
that shells out or parses exotic containers (EPS, PSD, ...).
"""

_PASS_THROUGH_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG"})
_LOSSLESS_FORMATS: frozenset[str] = frozenset({"PNG", "GIF", "BMP", "ICO", "PPM"})
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset(range(2, 9))
_RESIZABLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "I;16"})
_WHITE = (255, 255, 255)
_READ_CHUNK = 1 << 20
_NOT_IN_CLASS_FOLDER = "ignored: not inside a class folder"
_SNIFF_BYTES = 4096

# Exceptions Pillow raises (directly or from its C decoders) for bad data.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
    KeyError, struct.error, ZeroDivisionError,
)


class FileStatus(str, enum.Enum):
    """What happened to one file found in the image folder."""

    KEPT = "kept"
    CONVERTED = "converted"
    SKIPPED = "skipped"
    IGNORED = "ignored"
    DUPLICATE = "duplicate"


class UnusableImage(ValueError):
    """Raised by :func:`normalize_image` when bytes cannot become an image.

    ``str(error)`` is the human readable reason without the ``"skipped: "``
    prefix, e.g. ``"not an image: looks like HTML"``.
    """


@dataclasses.dataclass(frozen=True)
class IngestOptions:
    """Settings for :func:`ingest_file` and :func:`normalize_image`.

    Attributes:
        max_side: Images whose longer side exceeds this are downscaled (aspect
            ratio kept) so that the longer side equals it.
        max_pixels: Images with more than ``width * height`` pixels, read from
            the header before any decoding, are skipped as decompression bombs.
        jpeg_quality: Quality used when an image is re-encoded as JPEG.
    """

    max_side: int = 1024
    max_pixels: int = 100_000_000
    jpeg_quality: int = 95

    def validate(self) -> None:
        """Checks every setting.

        Raises:
            ValueError: naming the first bad setting, e.g.
                ``"max_side must be >= 32, got 0"``.
        """
        _require_int_in_range("max_side", self.max_side, 32, None)
        _require_int_in_range("max_pixels", self.max_pixels, 1, None)
        _require_int_in_range("jpeg_quality", self.jpeg_quality, 1, 100)


def _require_int_in_range(
    name: str, value: object, low: int, high: int | None
) -> None:
    """Raises ValueError unless ``low <= value (<= high)`` for an int value."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


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
            path; holds that first relative path. :func:`ingest_file` then
            ignores this path without reading it, so every real file is
            counted once while every path is still accounted for.
        split: The split folder the file was found under (``"train"``,
            ``"eval"``, ...), or ``""`` when the folder is not pre-split.
    """

    path: str
    relative_path: str
    label: str | None
    same_file_as: str | None = None
    split: str = ""


@dataclasses.dataclass(frozen=True)
class IngestedFile:
    """The outcome for one file.

    Attributes:
        relative_path: As in :class:`FoundFile`.
        label: As in :class:`FoundFile`.
        status: What happened.
        reason: ``""`` for KEPT, otherwise ``"<status>: <details>"``.
        content_hash: sha256 hex of the original file bytes; ``""`` when the
            file was not read (ignored) or could not be read.
        image_bytes: Encoded JPEG or PNG for KEPT/CONVERTED, else ``b""``.
        image_format: ``"jpeg"``, ``"png"`` or ``""``.
        width: Width of ``image_bytes`` (0 if none).
        height: Height of ``image_bytes`` (0 if none).
        split: As in :class:`FoundFile`.
        source_width: Width of the image as stored in the file, before any
            downscale (0 if it could not be read).
        source_height: Height of the image as stored in the file (0 if none).
        same_as: For a DUPLICATE, the relative path of the copy that was
            kept; ``""`` otherwise.
        leakage: True for a DUPLICATE whose kept copy lies in another given
            split (the same image in train/ and val/).
    """

    relative_path: str
    label: str | None
    status: FileStatus
    reason: str
    content_hash: str
    image_bytes: bytes
    image_format: str
    width: int
    height: int
    split: str = ""
    source_width: int = 0
    source_height: int = 0
    same_as: str = ""
    leakage: bool = False

    @property
    def has_image(self) -> bool:
        """Whether the file yields a training image (KEPT or CONVERTED)."""
        return self.status in (FileStatus.KEPT, FileStatus.CONVERTED)


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
    it carries ``same_file_as`` so :func:`ingest_file` counts it as IGNORED
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
    except OSError:  # Broken link: ingest_file reports it as unreadable.
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


# --------------------------------------------------------------------------
# Ingesting one file
# --------------------------------------------------------------------------


def sha256_file(path: str, chunk: int = _READ_CHUNK) -> str:
    """Returns the sha256 hex digest of a file (local or URI), read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with file_systems.for_path(path).open_regular(path) as handle:
        for piece in iter(lambda: handle.read(chunk), b""):
            digest.update(piece)
    return digest.hexdigest()


def ingest_file(
    found: FoundFile,
    options: IngestOptions = IngestOptions(),  # noqa: B008
    content_hash: str | None = None,
) -> IngestedFile:
    """Accounts for one file: ignores, skips, keeps or converts it.

    Path rules come first and cost no I/O: :func:`ignore_reason`, then
    ``found.label is None`` (so a caller may prefix ``relative_path``, e.g.
    with a split folder, without changing the outcome), then
    ``found.same_file_as``. Otherwise the file is read once (hashing as it
    streams in, unless the hash is given) and handed to :func:`normalize_image`.

    Args:
        found: A file from :func:`walk_image_folder`.
        options: Ingestion settings (validated here).
        content_hash: The file's sha256 hex when already known (from
            :func:`screen_file`), so it is not hashed twice.

    Returns:
        The outcome; never raises for a bad file.

    Raises:
        ValueError: Only if ``options`` are invalid.
    """
    options.validate()
    reason = _path_ignore_reason(found)
    if reason is not None:
        return _without_image(found, FileStatus.IGNORED, reason, "")
    try:
        data, read_hash = _read_regular_file(found.path, hash_it=content_hash is None)
    except UnusableImage as error:
        return _without_image(found, FileStatus.SKIPPED, f"skipped: {error}", content_hash or "")
    content_hash = content_hash or read_hash
    try:
        normalized = _normalize(data, options)
    except UnusableImage as error:
        return _without_image(
            found, FileStatus.SKIPPED, f"skipped: {error}", content_hash
        )
    except Exception as error:  # pylint: disable=broad-except
        # Last line of defence: a bad file must never fail the pipeline.
        reason = f"skipped: unexpected error decoding image ({_describe(error)})"
        return _without_image(found, FileStatus.SKIPPED, reason, content_hash)
    note = normalized.note
    return IngestedFile(
        relative_path=found.relative_path,
        label=found.label,
        status=FileStatus.CONVERTED if note else FileStatus.KEPT,
        reason=f"converted: {note}" if note else "",
        content_hash=content_hash,
        image_bytes=normalized.encoded,
        image_format=normalized.image_format,
        width=normalized.width,
        height=normalized.height,
        split=found.split,
        source_width=normalized.source_size[0],
        source_height=normalized.source_size[1],
    )


@dataclasses.dataclass(frozen=True)
class ScreenedFile:
    """A found file after the checks that need no decoding.

    Attributes:
        found: The file.
        content_hash: sha256 hex of its bytes; ``""`` when ``outcome`` is set.
        outcome: The final outcome when no decoding is needed (ignored by
            path, or unreadable); None when the content must be decoded.
    """

    found: FoundFile
    content_hash: str
    outcome: IngestedFile | None = None


def screen_file(found: FoundFile) -> ScreenedFile:
    """Applies the path rules and hashes the file, without decoding it.

    Reading and hashing is far cheaper than decoding, so a folder is first
    screened file by file; files sharing a hash are then settled together by
    :func:`resolve_copies`, which decodes each distinct content once.

    Args:
        found: A file from :func:`walk_image_folder`.

    Returns:
        The screened file; never raises for a bad file.
    """
    reason = _path_ignore_reason(found)
    if reason is not None:
        return ScreenedFile(found, "", _without_image(found, FileStatus.IGNORED, reason, ""))
    try:
        content_hash = _hash_regular_file(found.path)
    except UnusableImage as error:
        outcome = _without_image(found, FileStatus.SKIPPED, f"skipped: {error}", "")
        return ScreenedFile(found, "", outcome)
    return ScreenedFile(found, content_hash)


def resolve_copies(
    copies: Iterable[FoundFile],
    options: IngestOptions = IngestOptions(),  # noqa: B008
    split_order: Sequence[str] = (),
    content_hash: str | None = None,
) -> Iterator[IngestedFile]:
    """Settles files with the same content hash, decoding that content once.

    The copies are ordered by split (``split_order``, unknown splits last),
    then by relative path. The first copy is ingested with
    :func:`ingest_file`, then:

    * if its bytes are unusable, every copy is SKIPPED for that reason;
    * if the copies carry different labels, every copy is SKIPPED as a label
      conflict naming the others (nobody can tell which label is right);
    * otherwise the first copy is KEPT (or CONVERTED) and the others are
      DUPLICATE with ``same_as`` naming it. A duplicate in another split than
      the kept copy is marked ``leakage``: given splits that share an image
      would evaluate on training data, so only the first split keeps it.

    Args:
        copies: Screened files that share one content hash (at least one).
        options: Ingestion settings.
        split_order: Split names in priority order, e.g. ``("train", "eval")``.
        content_hash: Their hash, as :func:`screen_file` found it; None hashes
            the first copy again.

    Yields:
        One outcome per copy.
    """
    rank = {split: index for index, split in enumerate(split_order)}
    ordered = sorted(
        copies, key=lambda found: (rank.get(found.split, len(rank)), found.relative_path)
    )
    first, rest = ordered[0], ordered[1:]
    outcome = ingest_file(first, options, content_hash)
    if not outcome.has_image:
        yield outcome
        for copy in rest:
            yield _without_image(copy, outcome.status, outcome.reason, outcome.content_hash)
        return
    if len({found.label for found in ordered}) > 1:
        for copy in ordered:
            others = ", ".join(
                f"{other.relative_path} ({other.label})" for other in ordered if other is not copy
            )
            reason = f"skipped: label conflict: same content as {others}"
            yield _without_image(copy, FileStatus.SKIPPED, reason, outcome.content_hash)
        return
    yield outcome
    for copy in rest:
        leakage = copy.split != first.split
        reason = f"duplicate: same content as {first.relative_path}"
        if leakage:
            reason += f" (leakage: the given splits {first.split} and {copy.split} share it)"
        yield dataclasses.replace(
            _without_image(copy, FileStatus.DUPLICATE, reason, outcome.content_hash),
            same_as=first.relative_path,
            leakage=leakage,
        )


def _path_ignore_reason(found: FoundFile) -> str | None:
    """Why a found file is ignored without being read, else None."""
    reason = ignore_reason(found.relative_path)
    if reason is None and found.label is None:
        reason = _NOT_IN_CLASS_FOLDER
    if reason is None and found.same_file_as is not None:
        if file_systems.for_path(found.path).islink(found.path):
            reason = f"ignored: symlink to a file already counted ({found.same_file_as})"
        else:
            reason = f"ignored: same file already counted as {found.same_file_as}"
    return reason


def _without_image(
    found: FoundFile, status: FileStatus, reason: str, content_hash: str
) -> IngestedFile:
    """An IngestedFile that carries no image."""
    return IngestedFile(
        relative_path=found.relative_path,
        label=found.label,
        status=status,
        reason=reason,
        content_hash=content_hash,
        image_bytes=b"",
        image_format="",
        width=0,
        height=0,
        split=found.split,
    )


def _open_regular_file(path: str) -> BinaryIO:
    """Opens a regular file (symlinks followed) or an object-store object for reading.

    Raises:
        UnusableImage: For a missing target, a non-regular file (never opened,
            so a FIFO cannot block) or an open error.
    """
    fs = file_systems.for_path(path)
    try:
        return fs.open_regular(path)
    except file_systems.NotARegularFile as error:
        raise UnusableImage("not a regular file") from error
    except OSError as error:
        kind = "broken symlink" if fs.islink(path) else "unreadable file"
        raise UnusableImage(f"{kind} ({_describe(error)})") from error


def _hash_regular_file(path: str) -> str:
    """sha256 hex of a regular file, streamed in chunks (never held whole).

    Raises:
        UnusableImage: As :func:`_open_regular_file`, or on a read error.
    """
    digest = hashlib.sha256()
    with _open_regular_file(path) as handle:
        try:
            for piece in iter(lambda: handle.read(_READ_CHUNK), b""):
                digest.update(piece)
        except OSError as error:
            raise UnusableImage(f"unreadable file ({_describe(error)})") from error
    return digest.hexdigest()


def _read_regular_file(path: str, hash_it: bool = True) -> tuple[bytes, str]:
    """Reads a regular file, hashing it while it streams in.

    Args:
        path: File to read; symlinks are followed.
        hash_it: False skips the hash (returned as "").

    Returns:
        The bytes and their sha256 hex digest.

    Raises:
        UnusableImage: For a missing target, a non-regular file (never opened,
            so a FIFO cannot block) or a read error.
    """
    digest = hashlib.sha256() if hash_it else None
    pieces = []
    with _open_regular_file(path) as handle:
        try:
            for piece in iter(lambda: handle.read(_READ_CHUNK), b""):
                if digest is not None:
                    digest.update(piece)
                pieces.append(piece)
        except OSError as error:
            raise UnusableImage(f"unreadable file ({_describe(error)})") from error
    return b"".join(pieces), digest.hexdigest() if digest is not None else ""


def _describe(error: BaseException) -> str:
    """Short ``Type: message`` text for an exception."""
    text = getattr(error, "strerror", None) or str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --------------------------------------------------------------------------
# Normalising image bytes
# --------------------------------------------------------------------------


def normalize_image(
    data: bytes, options: IngestOptions
) -> tuple[bytes, str, int, int, str]:
    """Turns file bytes into an 8-bit RGB JPEG or PNG that TensorFlow reads.

    Pass-through (note ``""``): the bytes are an 8-bit RGB JPEG (or MPO) or an
    8-bit truecolour PNG without transparency or animation, with no EXIF
    rotation to apply, no side above ``options.max_side``, and they decode
    completely (a JPEG's every entropy-coded block is decoded, at 1/8 scale:
    see :func:`_check_jpeg_decodes`). They are returned unchanged.

    Otherwise the first frame is decoded (JPEGs larger than needed are
    decoded at 1/2, 1/4 or 1/8 scale through ``draft``), then in order: EXIF
    orientation applied, downscaled (antialiased bilinear) so the longer side equals
    ``max_side``, and made 8-bit RGB (CMYK/YCCK to RGB, grayscale expanded,
    16-bit values shifted right by 8, palette and alpha composited on white).

    Output format rule: PNG if the source container is lossless (PNG, GIF,
    BMP, ICO, PPM/PGM, lossless WebP), else JPEG at ``options.jpeg_quality``
    (JPEG, lossy WebP, TIFF).

    Decompression bombs: the size is read from the header and checked
    against ``options.max_pixels`` before any pixel is decoded. Pillow's own
    process-wide guard (``Image.MAX_IMAGE_PIXELS``) is left untouched,
    because changing a module global, even briefly, races with other threads
    of a Beam worker. Its ``DecompressionBombError`` (and its warning, when
    warning filters turn it into an error) is reported as a bomb too, so the
    effective limit is the smaller of the two.

    Args:
        data: The complete original file bytes.
        options: Ingestion settings.

    Returns:
        ``(encoded, "jpeg" | "png", width, height, note)`` where ``note``
        lists the changes (``""`` when the bytes were passed through).

    Raises:
        UnusableImage: With the reason the bytes cannot be used.
    """
    normalized = _normalize(data, options)
    return (
        normalized.encoded, normalized.image_format, normalized.width,
        normalized.height, normalized.note,
    )


class _Normalized(NamedTuple):
    """What :func:`_normalize` made of one file's bytes."""

    encoded: bytes
    image_format: str
    width: int
    height: int
    note: str
    source_size: tuple[int, int]


def _normalize(data: bytes, options: IngestOptions) -> _Normalized:
    """:func:`normalize_image`, also returning the size stored in the file."""
    options.validate()
    if not data:
        raise UnusableImage("empty file (0 bytes)")
    image = _open_image(data, options)
    source_size = image.size
    try:
        return _Normalized(*_normalize_open_image(image, data, options), source_size)
    finally:
        image.close()


def _open_image(data: bytes, options: IngestOptions) -> Image.Image:
    """Parses the header only and refuses decompression bombs.

    Raises:
        UnusableImage: If no allowed decoder recognises the bytes, or the
            header claims more than ``options.max_pixels`` pixels.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnusableImage(f"decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise UnusableImage(_describe_unidentified(data)) from error
    except _DECODE_ERRORS as error:
        raise UnusableImage(_corrupt_reason(error)) from error
    width, height = image.size
    if width * height > options.max_pixels:
        image.close()
        raise UnusableImage(
            f"decompression bomb ({width}x{height} = {width * height} pixels "
            f"exceeds max_pixels {options.max_pixels})"
        )
    if width < 1 or height < 1:
        image.close()
        raise UnusableImage(f"truncated or corrupt image (size {width}x{height})")
    return image


def _normalize_open_image(
    image: Image.Image, data: bytes, options: IngestOptions
) -> tuple[bytes, str, int, int, str]:
    """Decodes, checks and (if needed) converts an opened image."""
    source_format = image.format or ""
    notes = _frame_notes(image, source_format)  # Before decoding: may seek.
    target = _fit_within(image.size, options.max_side)
    if target is None and not notes and source_format in ("JPEG", "MPO"):
        # A JPEG's EXIF and colour mode are in its header: a pass-through
        # candidate is told before decoding, then only checked to decode.
        if _can_pass_through(image, data, _exif_orientation(image)):
            width, height = image.size
            _check_jpeg_decodes(image)
            return data, "jpeg", width, height, ""
    if target is not None and source_format in ("JPEG", "MPO"):
        image.draft("RGB", target)  # Decode at 1/2, 1/4 or 1/8 scale.
    _load(image)
    orientation = _exif_orientation(image)
    if target is None and not notes and _can_pass_through(image, data, orientation):
        image_format = "png" if source_format == "PNG" else "jpeg"
        return data, image_format, image.width, image.height, ""
    image_format = "png" if _encodes_as_png(source_format, data) else "jpeg"
    if source_format not in _PASS_THROUGH_FORMATS:
        notes.append(f"{source_format} re-encoded as {image_format.upper()}")
    if orientation in _TRANSPOSING_ORIENTATIONS:
        image = ImageOps.exif_transpose(image)
        notes.append(f"applied EXIF orientation {orientation}")
    resize_first = _resizes_safely(image)
    if not resize_first:
        image, mode_note = _to_rgb8(image, source_format, data)
    if target is not None:
        notes.append(_resize_note(image.size, options.max_side))
        image = _downscale(image, options.max_side)
    if resize_first:
        image, mode_note = _to_rgb8(image, source_format, data)
    if mode_note:
        notes.append(mode_note)
    if not notes:  # A pass-through candidate that failed a finer check.
        notes.append(f"{source_format} re-encoded as {image_format.upper()}")
    encoded = _encode(image, image_format, options.jpeg_quality)
    return encoded, image_format, image.width, image.height, "; ".join(notes)


def _load(image: Image.Image) -> None:
    """Fully decodes the current frame, mapping failures to UnusableImage."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnusableImage(f"decompression bomb ({error})") from error
    except _DECODE_ERRORS as error:
        raise UnusableImage(_corrupt_reason(error)) from error


def _check_jpeg_decodes(image: Image.Image) -> None:
    """Decodes a JPEG at 1/8 scale, the cheapest complete check libjpeg offers.

    DCT scaling skips only the inverse transform's detail and the colour
    conversion of full-size pixels: every entropy-coded block of the file is
    still decoded, so a truncated or corrupt stream fails here as it fails a
    full-size decode (800 random corruptions of baseline and progressive
    JPEGs gave the same outcome at both scales; a test keeps checking it).
    About twice as fast as a full decode of a photo.

    Raises:
        UnusableImage: The stream does not decode completely.
    """
    image.draft(image.mode, (1, 1))  # The largest reduction, 1/8.
    _load(image)


def _corrupt_reason(error: BaseException) -> str:
    """Reason text for a decoder failure."""
    return f"truncated or corrupt image ({_describe(error)})"


def _fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int] | None:
    """Target size with the longer side == max_side, or None if it fits."""
    width, height = size
    longer = max(width, height)
    if longer <= max_side:
        return None
    scale = max_side / longer
    return (
        max(1, min(max_side, round(width * scale))),
        max(1, min(max_side, round(height * scale))),
    )


def _exif_orientation(image: Image.Image) -> int:
    """EXIF orientation (1 when absent or unreadable)."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) else 1


def _can_pass_through(image: Image.Image, data: bytes, orientation: int) -> bool:
    """Whether the original bytes already decode in TF as Pillow sees them."""
    if orientation in _TRANSPOSING_ORIENTATIONS or image.mode != "RGB":
        return False
    if image.format in ("JPEG", "MPO"):
        return True
    if image.format == "PNG":
        return _png_bit_depth(data) == 8 and not image.has_transparency_data
    return False


def _png_bit_depth(data: bytes) -> int:
    """Bit depth from a PNG's IHDR chunk (0 if it cannot be read)."""
    if len(data) < 25 or data[12:16] != b"IHDR":
        return 0
    return data[24]


def _frame_notes(image: Image.Image, source_format: str) -> list[str]:
    """Notes that only the first frame of a multi-frame file is used."""
    if source_format in ("JPEG", "MPO"):
        return []  # Every JPEG decoder reads only the first MPO image.
    try:
        animated = bool(getattr(image, "is_animated", False))
        image.seek(0)
    except _DECODE_ERRORS as error:
        raise UnusableImage(_corrupt_reason(error)) from error
    return [f"first frame of multi-frame {source_format}"] if animated else []


def _resizes_safely(image: Image.Image) -> bool:
    """Whether resizing in the current mode is correct.

    Resizing before the RGB conversion keeps peak memory near one decoded
    frame; palette, bilevel and colour-keyed images must be expanded first.
    """
    return image.mode in _RESIZABLE_MODES and "transparency" not in image.info


def _resize_note(size: tuple[int, int], max_side: int) -> str:
    """Describes the downscale about to happen."""
    target = _fit_within(size, max_side) or size
    return f"downscaled {size[0]}x{size[1]} to {target[0]}x{target[1]}"


def _downscale(image: Image.Image, max_side: int) -> Image.Image:
    """Antialiased bilinear downscale so the longer side equals max_side.

    Pillow's bilinear filter widens with the scale factor, so it averages every
    source pixel (no aliasing). Not LANCZOS: the difference does not survive
    Transform's resize to the model's input, and LANCZOS costs twice as much,
    more than decoding the image (benchmarks/ingest.py).
    """
    target = _fit_within(image.size, max_side)
    if target is None:
        return image
    return image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _to_rgb8(
    image: Image.Image, source_format: str, data: bytes
) -> tuple[Image.Image, str]:
    """Converts any decoded mode to 8-bit RGB.

    Returns:
        The RGB image and a note on what changed (``""`` if nothing).

    Raises:
        UnusableImage: For pixel modes with no meaningful RGB rendering.
    """
    mode = image.mode
    if mode in ("P", "PA"):
        if image.has_transparency_data:
            note = "palette image with transparency composited on white"
            return _composite_on_white(image), note
        return image.convert("RGB"), "palette image to RGB"
    if image.has_transparency_data:
        return _composite_on_white(image), f"{mode} alpha composited on white"
    if mode == "RGB":
        if source_format == "PNG" and _png_bit_depth(data) == 16:
            return image, "16-bit PNG to 8-bit"
        return image, ""
    if mode == "CMYK":
        return image.convert("RGB"), f"CMYK {source_format} to RGB"
    if mode in ("L", "1"):
        return image.convert("RGB"), f"grayscale ({mode}) to RGB"
    if mode.startswith("I"):
        return _sixteen_bit_to_rgb(image), f"16-bit grayscale ({mode}) to 8-bit RGB"
    if mode == "F":
        raise UnusableImage("unsupported pixel mode F (floating point)")
    try:
        return image.convert("RGB"), f"{mode} to RGB"
    except ValueError as error:
        raise UnusableImage(f"unsupported pixel mode {mode}") from error


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Alpha-composites an image with transparency onto a white background."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """Maps 16-bit grayscale (``I;16*`` or ``I`` holding 0..65535) to RGB.

    Values are clipped to 0..65535 and shifted right by 8, so the full 16-bit
    range maps onto the full 8-bit range instead of saturating at 255.
    """
    values = np.asarray(image)
    if values.dtype.kind != "u" or values.dtype.itemsize != 2:
        values = np.clip(values, 0, 65535).astype(np.uint16)
    eight_bit = (values >> 8).astype(np.uint8)
    return Image.fromarray(eight_bit).convert("RGB")


def _encodes_as_png(source_format: str, data: bytes) -> bool:
    """Output rule: PNG for lossless sources, JPEG for the rest."""
    if source_format in _LOSSLESS_FORMATS:
        return True
    return source_format == "WEBP" and data[12:16] == b"VP8L"


def _encode(image: Image.Image, image_format: str, jpeg_quality: int) -> bytes:
    """Encodes an 8-bit RGB image as JPEG or PNG, without metadata."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue()


# --------------------------------------------------------------------------
# Describing bytes no decoder recognised
# --------------------------------------------------------------------------

_IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),  # Checked with its reserved zero bytes, see below.
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

_UNSUPPORTED_BRANDS: dict[bytes, str] = {
    b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF",
    b"avif": "AVIF", b"avis": "AVIF",
}

_OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
)


def _describe_unidentified(data: bytes) -> str:
    """Reason for bytes that no allowed Pillow decoder recognised."""
    for signature, name in _IMAGE_SIGNATURES:
        if data.startswith(signature) and (name != "BMP" or data[6:10] == bytes(4)):
            return f"truncated or corrupt image ({name} signature, unreadable header)"
    if data[4:8] == b"ftyp" and data[8:12] in _UNSUPPORTED_BRANDS:
        return f"unsupported image format: {_UNSUPPORTED_BRANDS[data[8:12]]}"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "truncated or corrupt image (WEBP signature, unreadable header)"
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature):
            return f"not an image: looks like {name}"
    return f"not an image: {_describe_text(data[:_SNIFF_BYTES])}"


def _describe_text(head: bytes) -> str:
    """Guesses what kind of text (if any) a file starts with."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # Not just a character cut at the end.
            return "unrecognised binary data"
        text = head[: error.start].decode("utf-8")
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if lowered.startswith("<!doctype html") or "<html" in lowered:
        return "looks like HTML"
    if "<svg" in lowered:
        return "looks like SVG (vector images are not supported)"
    if lowered.startswith("<"):
        return "looks like XML"
    if lowered.startswith("{"):
        return "looks like JSON"
    printable = sum(char.isprintable() or char in "\t\r\n" for char in text)
    if text and printable / len(text) > 0.95:
        return "looks like plain text"
    return "unrecognised binary data"
