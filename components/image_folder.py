"""Rules for an image folder as a whole: layouts, spans, splits, and the manifest summary.

Pure Python, like the rules on one file at a time (`components/folder_walk.py`,
`components/file_outcome.py`), so `transferline scan` applies exactly the rules
ImageFolderExampleGen applies, and `transferline run` can check a folder before
any pipeline work. Folders are listed through `components/file_systems.py`: `os` for
local paths, `tf.io.gfile` for object-store URIs (gs://, s3://, ...).

Layouts (`LAYOUTS` lists the names):
    classes:        <root>/<class>/**/<image>                      split by content hash
    presplit:       <root>/{train,val|eval}/<class>/**/<image>     splits taken as given
    presplit-test:  as presplit, plus <root>/test/<class>/...      a third, reporting split
    span-<layout>:  <root>/span-<N>/<layout>                       TFX's `{SPAN}` pattern
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import hashlib
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from components import file_systems, folder_walk
from components.config import IngestConfig
from components.file_outcome import FileStatus, IngestedFile
from trainer.features import EVAL_SPLIT, TEST_SPLIT, TRAIN_SPLIT

LAYOUT_CLASSES = "classes"
LAYOUT_PRESPLIT = "presplit"
LAYOUT_PRESPLIT_TEST = "presplit-test"
SPAN_LAYOUT_PREFIX = "span-"
_SPLIT_LAYOUTS = (LAYOUT_CLASSES, LAYOUT_PRESPLIT, LAYOUT_PRESPLIT_TEST)
LAYOUTS = _SPLIT_LAYOUTS + tuple(SPAN_LAYOUT_PREFIX + layout for layout in _SPLIT_LAYOUTS)
"""Every layout name."""

SPAN_FOLDER = "span-{SPAN}"
"""The span folder pattern, TFX's `{SPAN}` spec: span-1, span-2, ... (no zero padding)."""
_SPAN_FOLDER_RE = re.compile(r"span-(\d+)")

ALL_SPLIT = "all"
EVAL_FOLDER_NAMES = ("val", "eval")
SPLIT_ORDER = (TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT)
"""Priority of given splits: an image found in several is kept in the first."""


class IngestionError(ValueError):
    """The image folder cannot make a training set (one message says why)."""


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """One input split: its name and its TFX file pattern relative to the data root."""

    name: str
    pattern: str


# --------------------------------------------------------------------------- layout


def _names(path: str) -> set[str]:
    return set(file_systems.listdir(path))


def list_spans(data_root: str) -> list[int]:
    """Span numbers of the `span-<N>` folders directly under `data_root`, ascending.

    Raises:
        IngestionError: A span folder is zero-padded (TFX's `{SPAN}` would not find it).
    """
    spans = []
    for name in _names(data_root):
        match = _SPAN_FOLDER_RE.fullmatch(name)
        if match is None:
            continue
        if str(int(match.group(1))) != match.group(1):
            raise IngestionError(
                f"span folder {name!r} under {data_root!r} is zero-padded; "
                f"name it span-{int(match.group(1))}"
            )
        spans.append(int(match.group(1)))
    return sorted(spans)


def has_spans(layout: str) -> bool:
    """Whether a layout name reads `span-<N>` folders."""
    return layout.startswith(SPAN_LAYOUT_PREFIX)


def _detect_split_layout(root: str) -> tuple[str, str]:
    names = _names(root)
    eval_folder = next((name for name in EVAL_FOLDER_NAMES if name in names), None)
    if TRAIN_SPLIT in names and eval_folder is not None:
        return (LAYOUT_PRESPLIT_TEST if TEST_SPLIT in names else LAYOUT_PRESPLIT), eval_folder
    return LAYOUT_CLASSES, EVAL_FOLDER_NAMES[0]


def detect_layout(data_root: str) -> tuple[str, str]:
    """Lists `data_root` (and its latest span folder) to find its layout.

    Returns:
        (layout, one of LAYOUTS; the eval folder's name, "val" or "eval").
    """
    spans = list_spans(data_root)
    if spans:
        layout, eval_folder = _detect_split_layout(
            os.path.join(data_root, f"span-{spans[-1]}")
        )
        return SPAN_LAYOUT_PREFIX + layout, eval_folder
    return _detect_split_layout(data_root)


def split_specs(layout: str, eval_folder: str = EVAL_FOLDER_NAMES[0]) -> list[SplitSpec]:
    """The input splits of a layout, with `{SPAN}` patterns for span layouts.

    Raises:
        ValueError: `layout` is not one of LAYOUTS.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    prefix = f"{SPAN_FOLDER}/" if has_spans(layout) else ""
    split_layout = layout[len(SPAN_LAYOUT_PREFIX):] if has_spans(layout) else layout
    if split_layout == LAYOUT_CLASSES:
        return [SplitSpec(ALL_SPLIT, f"{prefix}*")]
    splits = [
        SplitSpec(TRAIN_SPLIT, f"{prefix}{TRAIN_SPLIT}/*"),
        SplitSpec(EVAL_SPLIT, f"{prefix}{eval_folder}/*"),
    ]
    if split_layout == LAYOUT_PRESPLIT_TEST:
        splits.append(SplitSpec(TEST_SPLIT, f"{prefix}{TEST_SPLIT}/*"))
    return splits


def pattern_root(data_root: str, split_pattern: str) -> str:
    """The folder whose subfolders are the classes, for a pattern like 'train/*'."""
    if not split_pattern.endswith("*"):
        raise IngestionError(f"split pattern {split_pattern!r} must end with '*'")
    return os.path.join(data_root, os.path.dirname(split_pattern))


def resolve_split_roots(
    data_root: str,
    span: int = 0,
) -> tuple[str, int, list[tuple[SplitSpec, str]]]:
    """The layout, the span and the class root of each split, as a run would resolve them.

    Args:
        data_root: The image folder.
        span: For span layouts, the span to read; 0 means the latest (TFX's default).

    Returns:
        (layout; span number, 0 without spans; [(split with the span filled in,
        its class root folder), ...]).

    Raises:
        IngestionError: The folder is missing, the span does not exist, or a
            span is asked of a folder without span-<N> folders.
    """
    if not file_systems.isdir(data_root):
        raise IngestionError(f"data folder {data_root!r} does not exist or is not a folder")
    layout, eval_folder = detect_layout(data_root)
    spans = list_spans(data_root)
    if span and not spans:
        raise IngestionError(f"span {span} asked, but {data_root!r} has no span-<N> folders")
    if spans:
        span = span or spans[-1]
        if span not in spans:
            listed = ", ".join(str(s) for s in spans)
            raise IngestionError(f"span {span} not found under {data_root!r} (spans: {listed})")
    roots = []
    for split in split_specs(layout, eval_folder):
        resolved = SplitSpec(split.name, split.pattern.replace("{SPAN}", str(span)))
        roots.append((resolved, pattern_root(data_root, resolved.pattern)))
    return layout, span, roots


def relative_prefix(data_root: str, split_pattern: str) -> str:
    """The split's class root relative to the data root ('' for the root itself)."""
    pattern_root(data_root, split_pattern)  # Checks the pattern.
    prefix = posixpath.normpath(posixpath.dirname(split_pattern))
    return "" if prefix == "." else prefix


def find_files(
    data_root: str, split_pattern: str, split: str = ""
) -> Iterator[folder_walk.FoundFile]:
    """Streams every file under a split's class root, paths relative to `data_root`.

    Args:
        data_root: The image folder.
        split_pattern: The split's (span-resolved) pattern, e.g. 'span-2/train/*'.
        split: The split name to record on each file ('' when not pre-split).
    """
    prefix = relative_prefix(data_root, split_pattern)
    for found in folder_walk.walk_image_folder(pattern_root(data_root, split_pattern)):
        if not prefix:
            yield dataclasses.replace(found, split=split)
            continue
        same_file_as = found.same_file_as and f"{prefix}/{found.same_file_as}"
        yield dataclasses.replace(
            found,
            relative_path=f"{prefix}/{found.relative_path}",
            same_file_as=same_file_as,
            split=split,
        )


def class_folders(data_root: str, split_pattern: str) -> list[str]:
    """Relative paths (ending in '/') of the class folders under a split's root.

    Hidden and system folders are not class folders.
    """
    root = pattern_root(data_root, split_pattern)
    prefix = relative_prefix(data_root, split_pattern)
    folders = []
    for name in sorted(_names(root)):
        if folder_walk.ignore_reason(f"{name}/x.jpg") is not None:
            continue
        if file_systems.isdir(os.path.join(root, name)):
            folders.append(f"{prefix}/{name}/" if prefix else f"{name}/")
    return folders


def count_classes(data_root: str, span: int = 0) -> int:
    """Class folders of the training split (the span's, for span layouts), found by listing."""
    _, _, roots = resolve_split_roots(data_root, span)
    split, _ = roots[0]
    return len(class_folders(data_root, split.pattern))


def precheck_data_root(data_root: str, span: int = 0) -> None:
    """Fast structural check before any pipeline work (no image is decoded).

    Raises:
        IngestionError: The folder (or span) is missing, or fewer than two
            class folders of a split hold files with image extensions.
    """
    _, _, roots = resolve_split_roots(data_root, span)
    for _, root in roots:
        labels_with_images = set()
        for found in folder_walk.walk_image_folder(root):
            if found.label not in labels_with_images and folder_walk.ignore_reason(
                found.relative_path
            ) is None:
                labels_with_images.add(found.label)
        if not labels_with_images:
            raise IngestionError(f"no images found under {root!r} (one subfolder per class)")
        if len(labels_with_images) < 2:
            raise IngestionError(
                f"need at least two class folders with images under {root!r}, "
                f"found {len(labels_with_images)}: {', '.join(sorted(labels_with_images))}"
            )


# ---------------------------------------------------------------------- hash split


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def hash_buckets(config: IngestConfig) -> list[tuple[str, int]]:
    """(split name, hash buckets) of a folder split by content hash, in SplitConfig order.

    Out of 100 buckets: `eval_percent` for eval, `test_percent` for test (no
    test split at 0), the rest for train.
    """
    buckets = [
        (TRAIN_SPLIT, 100 - config.eval_percent - config.test_percent),
        (EVAL_SPLIT, config.eval_percent),
    ]
    if config.test_percent:
        buckets.append((TEST_SPLIT, config.test_percent))
    return buckets


def hash_split(content_hash: str, splits: Sequence[tuple[str, int]]) -> str:
    """The split TFX's ExampleGen gives an example, partitioned on its content hash.

    TFX hashes the partition feature serialized as a `tf.train.Feature`
    (a bytes_list holding the hash) with sha256 and takes the bucket modulo the
    total of `hash_buckets`. The Feature is encoded here by hand so that this
    stays free of TensorFlow; a test checks it against TFX's `_PartitionFn`.

    Args:
        content_hash: The example's `content_hash` feature.
        splits: (split name, hash_buckets) in SplitConfig order.
    """
    value = content_hash.encode()
    bytes_list = b"\x0a" + _varint(len(value)) + value
    feature = b"\x0a" + _varint(len(bytes_list)) + bytes_list
    bounds = []
    total = 0
    for _, buckets in splits:
        total += buckets
        bounds.append(total)
    bucket = int(hashlib.sha256(feature).hexdigest(), 16) % total
    return splits[bisect.bisect(bounds, bucket)][0]


# ------------------------------------------------------------------ summary checks


def manifest_row(ingested: IngestedFile) -> dict[str, Any]:
    """One manifest row: what happened to one file."""
    row = {
        "path": ingested.relative_path,
        "content_hash": ingested.content_hash,
        "label": ingested.label,
        "split": ingested.split or None,
        "status": ingested.status.value,
        "reason": ingested.reason,
    }
    if ingested.source_width:
        row["source_size"] = [ingested.source_width, ingested.source_height]
    if ingested.same_as:
        row["same_as"] = ingested.same_as
    if ingested.leakage:
        row["leakage"] = True
    return row


def summarize_manifest(
    rows: Iterable[dict[str, Any]], class_folder_paths: Iterable[str] = ()
) -> dict[str, Any]:
    """Counts by status, images per class and split; lists files not used, with reasons.

    Streams the rows: what it keeps grows with the classes and the files not
    used, not with the images.

    Args:
        rows: Manifest rows.
        class_folder_paths: Every class folder found (relative, ending in '/');
            one holding no usable image is a warning, not a class.

    Returns:
        The ingest summary. `files_seen` equals the sum of `by_status` (every
        path found has exactly one status); `reconciles` says so explicitly.
    """
    by_status: collections.Counter[str] = collections.Counter()
    per_class: collections.Counter[str] = collections.Counter()
    per_split: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    folders = list(class_folder_paths)
    folder_set = set(folders)
    folders_with_images: set[str] = set()
    not_used: list[dict[str, str]] = []
    leakage: list[dict[str, str]] = []
    for row in rows:
        by_status[row["status"]] += 1
        if row["status"] in (FileStatus.KEPT, FileStatus.CONVERTED):
            per_class[row["label"]] += 1
            per_split[row.get("split") or ALL_SPLIT][row["label"]] += 1
            folders_with_images.update(_folders_holding(row["path"], folder_set))
        elif row["status"] != FileStatus.IGNORED:
            not_used.append({"path": row["path"], "status": row["status"], "reason": row["reason"]})
        if row.get("leakage"):
            leakage.append({"path": row["path"], "same_as": row.get("same_as", "")})
    empty = [path for path in folders if path not in folders_with_images]
    warnings = [f"class folder {path} holds no usable image: not a class" for path in empty]
    if leakage:
        warnings.append(
            f"{len(leakage)} images appear in more than one given split (leakage); "
            "each is kept in the first split only"
        )
    counted = {status.value: by_status[status.value] for status in FileStatus}
    files_seen = sum(by_status.values())
    return {
        "files_seen": files_seen,
        "by_status": counted,
        "reconciles": files_seen == sum(counted.values()),
        "images_per_class": dict(sorted(per_class.items())),
        "images_per_split": {
            split: dict(sorted(counts.items())) for split, counts in sorted(per_split.items())
        },
        "empty_class_folders": empty,
        "leakage": sorted(leakage, key=lambda row: row["path"]),
        "warnings": warnings,
        "not_used": sorted(not_used, key=lambda row: row["path"]),
    }


def _folders_holding(path: str, folders: set[str]) -> list[str]:
    """The class folders (at most span/split/class deep) that `path` lies in."""
    parts = path.split("/")[:-1]
    prefixes = ("/".join(parts[:depth]) + "/" for depth in range(1, min(len(parts), 3) + 1))
    return [prefix for prefix in prefixes if prefix in folders]


def check_classes(images_per_class: dict[str, int], min_images_per_class: int) -> None:
    """Refuses data that cannot train a classifier.

    Raises:
        IngestionError: Fewer than two classes have images, or a class has
            fewer than `min_images_per_class`.
    """
    if len(images_per_class) < 2:
        found = ", ".join(images_per_class) or "none"
        raise IngestionError(
            f"need at least two classes with images, found {len(images_per_class)} ({found})"
        )
    small = {label: n for label, n in images_per_class.items() if n < min_images_per_class}
    if small:
        listed = ", ".join(f"{label} ({n})" for label, n in sorted(small.items()))
        raise IngestionError(
            f"classes below min_images_per_class={min_images_per_class}: {listed}"
        )
