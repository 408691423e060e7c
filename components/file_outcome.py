"""One file's outcome: ignored, skipped, kept or converted, with the reason.

:func:`ingest_file` turns one :class:`~components.folder_walk.FoundFile` into
an :class:`IngestedFile` whose :class:`FileStatus` says what happened:

- ``KEPT``: the original bytes are already an 8-bit RGB JPEG or PNG that
  TensorFlow's ``tf.io.decode_image`` reads exactly as Pillow does, so they
  are passed through byte-for-byte.
- ``CONVERTED``: the image was usable but had to be changed (orientation,
  colour mode, bit depth, alpha, animation, container format, size); the
  reason lists every change.
- ``SKIPPED``: the file looks like it was meant to be an image but cannot be
  used (empty, truncated, not really an image, decompression bomb,
  unreadable), or its content also lies under another label.
- ``IGNORED``: the file was never meant to be an image (hidden and system
  files, other extensions, files outside class folders) or is a second path
  to a file already counted. Ignored files are not read.
- ``DUPLICATE``: its content was already kept under another path; needs every
  file's hash, so a folder is first screened file by file
  (:func:`screen_file`: path rules and hash, no decoding), then the files
  sharing a hash are settled together (:func:`resolve_copies`).

The path rules are ``components/folder_walk.py``'s, the decoding
``components/image_normalization.py``'s. No function here raises for a bad
file. Pure Python, so ImageFolderExampleGen's Beam workers and
``transferline scan`` apply exactly the same rules.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

from components import file_systems, image_normalization
from components.config import IngestConfig
from components.folder_walk import FoundFile
from components.image_normalization import UnusableImage
from trainer.errors import one_line

_READ_CHUNK = 1 << 20


class FileStatus(str, enum.Enum):
    """What happened to one file found in the image folder."""

    KEPT = "kept"
    CONVERTED = "converted"
    SKIPPED = "skipped"
    IGNORED = "ignored"
    DUPLICATE = "duplicate"


@dataclasses.dataclass(frozen=True)
class IngestedFile:
    """The outcome for one file.

    Attributes:
        relative_path: As in :class:`~components.folder_walk.FoundFile`.
        label: As in :class:`~components.folder_walk.FoundFile`.
        status: What happened.
        reason: ``""`` for KEPT, otherwise ``"<status>: <details>"``.
        content_hash: sha256 hex of the original file bytes; ``""`` when the
            file was not read (ignored) or could not be read.
        image_bytes: Encoded JPEG or PNG for KEPT/CONVERTED, else ``b""``.
        image_format: ``"jpeg"``, ``"png"`` or ``""``.
        width: Width of ``image_bytes`` (0 if none).
        height: Height of ``image_bytes`` (0 if none).
        split: As in :class:`~components.folder_walk.FoundFile`.
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


def ingest_file(
    found: FoundFile,
    config: IngestConfig = IngestConfig(),
    content_hash: str | None = None,
) -> IngestedFile:
    """Accounts for one file: ignores, skips, keeps or converts it.

    The path rules come first and cost no I/O
    (:meth:`~components.folder_walk.FoundFile.ignore_reason`). Otherwise the
    file is read once (hashing as it streams in, unless the hash is given)
    and handed to :func:`~components.image_normalization.normalize_image`.

    Args:
        found: A file from :func:`~components.folder_walk.walk_image_folder`.
        config: Ingestion settings (validated here).
        content_hash: The file's sha256 hex when already known (from
            :func:`screen_file`), so it is not hashed twice.

    Returns:
        The outcome; never raises for a bad file.

    Raises:
        ValueError: Only if ``config`` is invalid.
    """
    config.validate()
    reason = found.ignore_reason()
    if reason is not None:
        return _without_image(found, FileStatus.IGNORED, reason, "")
    try:
        data, read_hash = _read_regular_file(found.path, hash_it=content_hash is None)
    except UnusableImage as error:
        return _without_image(found, FileStatus.SKIPPED, f"skipped: {error}", content_hash or "")
    content_hash = content_hash or read_hash
    try:
        normalized = image_normalization.normalize_image(data, config)
    except UnusableImage as error:
        return _without_image(
            found, FileStatus.SKIPPED, f"skipped: {error}", content_hash
        )
    except Exception as error:  # pylint: disable=broad-except
        # Last line of defence: a bad file must never fail the pipeline.
        reason = f"skipped: unexpected error decoding image ({one_line(error)})"
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
        found: A file from :func:`~components.folder_walk.walk_image_folder`.

    Returns:
        The screened file; never raises for a bad file.
    """
    reason = found.ignore_reason()
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
    config: IngestConfig = IngestConfig(),
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
        config: Ingestion settings.
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
    outcome = ingest_file(first, config, content_hash)
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
        raise UnusableImage(file_systems.NOT_A_REGULAR_FILE) from error
    except OSError as error:
        kind = "broken symlink" if fs.islink(path) else "unreadable file"
        raise UnusableImage(f"{kind} ({one_line(error)})") from error


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
            raise UnusableImage(f"unreadable file ({one_line(error)})") from error
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
            raise UnusableImage(f"unreadable file ({one_line(error)})") from error
    return b"".join(pieces), digest.hexdigest() if digest is not None else ""

