"""`transferline scan DIR [--json]`: the ingestion rules on a folder, without training.

Applies exactly what ImageFolderExampleGen applies (`components/image_folder.py`
for the layout, spans and splits, `components/file_outcome.py` for each file),
with the same settings (`components.config.IngestConfig`), without Beam, on a
pool of worker processes: every file is hashed, each distinct content decoded
once. It reports per-class counts, what would be skipped and why, duplicates,
label conflicts, leakage between given splits, and the image-size
distribution; the exit status says whether the folder can train (0) or not
(2), so it can gate every data drop. DIR may be an
object-store URI (gs://, s3://): files are then read through `tf.io.gfile`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import multiprocessing
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from components import file_outcome, image_folder
from components.config import IngestConfig
from components.file_outcome import FileStatus, IngestedFile
from components.folder_walk import FoundFile
from pipeline import progress
from trainer.progress_events import Progress

EXIT_OK = 0
EXIT_UNFIT = 2
DEFAULT_WORKERS = 2
"""Worker processes of a scan; 1 scans in this process (needed for TF's in-process
ram:// file system, which other processes cannot see)."""
_INGEST_FLAGS: dict[str, str | None] = {
    "span": "with span-N folders: the span (default latest)",
    "max_side": None,
    "eval_percent": None,
    "test_percent": None,
    "min_images_per_class": None,
}
"""The IngestConfig settings `scan` takes as flags (`--max-side`, ...), with their help."""
_SIZE_BUCKETS = (256, 512, 1024, 2048, 4096)
_LISTED = 20  # Lines per section in the text report; --json lists everything.
_CONFLICT = "skipped: label conflict"


# ------------------------------------------------------------------------ scanning


def _settle(group: tuple[str, list[FoundFile], IngestConfig]) -> list[IngestedFile]:
    """resolve_copies in a worker, without shipping image bytes back."""
    content_hash, copies, config = group
    return [
        dataclasses.replace(outcome, image_bytes=b"")
        for outcome in file_outcome.resolve_copies(
            copies, config, image_folder.SPLIT_ORDER, content_hash)
    ]


class _InProcess:
    """The slice of multiprocessing.Pool's API a scan uses, run in this process."""

    def imap_unordered(self, function, items, chunksize=1):  # noqa: ARG002
        return map(function, items)

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        return None


def _pool(workers: int):
    if workers == 1:
        return _InProcess()
    # spawn: safe whatever threads the caller runs (fork is not, once TF is loaded).
    return multiprocessing.get_context("spawn").Pool(workers)


def _no_progress(event: Progress) -> None:  # noqa: ARG001
    return None


def account_for_files(
    data_root: str, ingest: IngestConfig, workers: int,
    on_progress: Callable[[Progress], None] = _no_progress,
) -> tuple[str, int, list[IngestedFile], list[str]]:
    """Every file's outcome under the ingestion rules.

    Args:
        data_root: The image folder.
        ingest: The settings a run would ingest it with.
        workers: Worker processes (see DEFAULT_WORKERS).
        on_progress: Called as files are listed, hashed, then accounted for
            (out of the files listed), as ImageFolderExampleGen reports them.

    Returns:
        (layout, span, one outcome per file found, the class folders found).

    Raises:
        image_folder.IngestionError: The folder or span does not exist.
        OSError: A folder cannot be listed.
    """
    layout, span, roots = image_folder.resolve_split_roots(data_root, ingest.span)
    given = len(roots) > 1
    found: list[FoundFile] = []
    folders: list[str] = []
    for split, _ in roots:
        folders += image_folder.class_folders(data_root, split.pattern)
        found += image_folder.find_files(data_root, split.pattern, split.name if given else "")
        on_progress(Progress("listed", len(found)))
    outcomes: list[IngestedFile] = []
    with _pool(workers) as pool:
        by_hash: dict[str, list[FoundFile]] = collections.defaultdict(list)
        screening = pool.imap_unordered(file_outcome.screen_file, found, chunksize=32)
        for hashed, screened in enumerate(screening, start=1):
            if screened.outcome is not None:
                outcomes.append(screened.outcome)
            else:
                by_hash[screened.content_hash].append(screened.found)
            on_progress(Progress("hashed", hashed, len(found)))
        groups = ((content_hash, copies, ingest) for content_hash, copies in by_hash.items())
        for settled in pool.imap_unordered(_settle, groups, chunksize=4):
            outcomes += settled
            on_progress(Progress("accounted for", len(outcomes), len(found)))
    if not given:
        splits = image_folder.hash_buckets(ingest)
        outcomes = [
            dataclasses.replace(
                outcome, split=image_folder.hash_split(outcome.content_hash, splits))
            if outcome.content_hash else outcome
            for outcome in outcomes
        ]
    outcomes.sort(key=lambda outcome: outcome.relative_path)
    return layout, span, outcomes, folders


def scan_folder(
    data_root: str, ingest: IngestConfig = IngestConfig(), workers: int = DEFAULT_WORKERS,
    on_progress: Callable[[Progress], None] = _no_progress,
) -> dict[str, Any]:
    """Scans a folder; returns the report `--json` prints.

    Args:
        data_root: The image folder (local path or object-store URI).
        ingest: The settings a run would ingest it with.
        workers: Worker processes (see DEFAULT_WORKERS).
        on_progress: Called with each step of progress (see `account_for_files`).

    Raises:
        image_folder.IngestionError: The folder or span does not exist.
        ValueError: A setting is impossible.
    """
    ingest.validate()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    started = time.monotonic()
    layout, span, outcomes, folders = account_for_files(data_root, ingest, workers, on_progress)
    summary = image_folder.summarize_manifest(
        (image_folder.manifest_row(outcome) for outcome in outcomes), folders
    )
    problems = []
    try:
        image_folder.check_classes(summary["images_per_class"], ingest.min_images_per_class)
    except image_folder.IngestionError as error:
        problems.append(str(error))
    not_used = summary.pop("not_used")
    return {
        "data_root": data_root,
        "layout": layout,
        "span": span,
        "seconds": round(time.monotonic() - started, 3),
        **summary,
        "skipped": [row for row in not_used
                    if row["status"] == FileStatus.SKIPPED
                    and not row["reason"].startswith(_CONFLICT)],
        "conflicts": [row for row in not_used if row["reason"].startswith(_CONFLICT)],
        "duplicates": [
            {"path": o.relative_path, "same_as": o.same_as, "leakage": o.leakage}
            for o in outcomes if o.status is FileStatus.DUPLICATE
        ],
        "reasons": _reason_counts(outcomes),
        "image_sizes": size_distribution(
            (o.source_width, o.source_height) for o in outcomes if o.has_image
        ),
        "downscaled": sum(1 for o in outcomes
                          if o.has_image
                          and max(o.source_width, o.source_height) > ingest.max_side),
        "problems": problems,
        "fit": not problems,
    }


def _reason_kind(reason: str) -> str:
    """'skipped: truncated or corrupt image' for any such reason, whatever its details."""
    kind = re.sub(r"\s*\(.*", "", reason)  # Details in parentheses.
    kind = re.sub(r" as \S+$", "", kind)  # The other copy's path.
    return re.sub(r"\s+\d+x\d+ to \d+x\d+", "", kind)  # Sizes of a downscale.


def _reason_counts(outcomes: Iterable[IngestedFile]) -> dict[str, int]:
    """How many files share each kind of reason (each conversion step counted)."""
    counts: collections.Counter[str] = collections.Counter()
    for outcome in outcomes:
        if not outcome.reason:
            continue
        status, _, details = outcome.reason.partition(": ")
        parts = details.split("; ") if status == FileStatus.CONVERTED else [details]
        for part in parts:
            counts[_reason_kind(f"{status}: {part}")] += 1
    return dict(sorted(counts.items()))


def size_distribution(sizes: Iterable[tuple[int, int]]) -> dict[str, Any]:
    """Longest-side histogram and width/height ranges of the usable images, as stored."""
    widths, heights = [], []
    buckets: collections.Counter[str] = collections.Counter()
    for width, height in sizes:
        widths.append(width)
        heights.append(height)
        buckets[_bucket(max(width, height))] += 1
    names = [_bucket(edge - 1) for edge in _SIZE_BUCKETS] + [_bucket(_SIZE_BUCKETS[-1])]

    def summary(values: Sequence[int]) -> dict[str, float]:
        if not values:
            return {}
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {
        "longest_side": {name: buckets[name] for name in names},
        "width": summary(widths),
        "height": summary(heights),
    }


def _bucket(longest: int) -> str:
    low = 0
    for edge in _SIZE_BUCKETS:
        if longest < edge:
            return f"{low}-{edge - 1}"
        low = edge
    return f">={_SIZE_BUCKETS[-1]}"


# ------------------------------------------------------------------------- report


def format_report(report: dict[str, Any]) -> str:
    """The scan report as text, a few lines per section."""
    return "\n".join(_report_lines(report))


def _report_lines(report: dict[str, Any]) -> Iterator[str]:
    span = f", span {report['span']}" if report["span"] else ""
    yield (f"Scanned {report['data_root']} (layout {report['layout']}{span}): "
           f"{report['files_seen']} files in {report['seconds']:.1f}s")
    counts = report["by_status"]
    yield (f"  files:      {report['files_seen']} seen = {counts['kept']} kept + "
           f"{counts['converted']} converted + {counts['skipped']} skipped + "
           f"{counts['ignored']} ignored + {counts['duplicate']} duplicates")
    per_split = report["images_per_split"]
    for label, total in report["images_per_class"].items():
        by_split = ", ".join(
            f"{split} {counts.get(label, 0)}" for split, counts in per_split.items())
        yield f"  class:      {label:<20} {total:>6} images ({by_split})"
    sizes = report["image_sizes"]
    if sizes["width"]:
        histogram = ", ".join(f"{name}: {n}" for name, n in sizes["longest_side"].items() if n)
        yield f"  sizes:      longest side {histogram}"
        yield (f"              width {sizes['width']['min']}..{sizes['width']['max']} "
               f"(median {sizes['width']['median']:g}), height {sizes['height']['min']}.."
               f"{sizes['height']['max']} (median {sizes['height']['median']:g}); "
               f"{report['downscaled']} would be downscaled")
    for index, (reason, n) in enumerate(report["reasons"].items()):
        yield f"  {'reasons:' if index == 0 else '':<11} {n:>5}  {reason}"
    yield from _listed("skipped", report["skipped"], lambda row: f"{row['path']}: {row['reason']}")
    yield from _listed(
        "conflict", report["conflicts"], lambda row: f"{row['path']}: {row['reason']}")
    yield from _listed(
        "duplicate", report["duplicates"],
        lambda row: f"{row['path']} = {row['same_as']}" + (" (leakage)" if row["leakage"] else ""),
    )
    for warning in report["warnings"]:
        yield f"  warning:    {warning}"
    for problem in report["problems"]:
        yield f"  problem:    {problem}"
    yield "  verdict:    " + ("ready to train" if report["fit"] else "cannot train (see problems)")


def _listed(title: str, rows: list[dict[str, Any]], describe) -> Iterator[str]:
    for row in rows[:_LISTED]:
        yield f"  {title + ':':<11} {describe(row)}"
    if len(rows) > _LISTED:
        yield f"  {title + ':':<11} ... and {len(rows) - _LISTED} more (--json lists all)"


# ---------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `scan` to the `transferline` command."""
    scan = subparsers.add_parser(
        "scan", help="apply the ingestion rules to an image folder, without training"
    )
    scan.set_defaults(handler=run_scan)
    scan.add_argument("data", metavar="DIR", help="image folder (same layouts as `run --data`)")
    scan.add_argument("--json", action="store_true", help="print the full report as JSON")
    for name, help_text in _INGEST_FLAGS.items():
        scan.add_argument("--" + name.replace("_", "-"), type=int, help=help_text)
    scan.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                      help=f"worker processes (default {DEFAULT_WORKERS})")
    progress.add_output_flags(scan)


def run_scan(args: argparse.Namespace) -> int:
    """Handler of `transferline scan`: 0 when the folder can train, 2 otherwise."""
    given = {name: getattr(args, name) for name in _INGEST_FLAGS if getattr(args, name) is not None}
    reporter = progress.reporter_for(args)
    try:
        with progress.Ticker(reporter), reporter.step("scan") as on_progress:
            report = scan_folder(args.data, IngestConfig(**given), workers=args.workers,
                                 on_progress=on_progress)
    except (ValueError, OSError) as error:  # IngestionError is a ValueError.
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNFIT
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return EXIT_OK if report["fit"] else EXIT_UNFIT
