"""ImageFolderExampleGen: a folder of labelled images in, tf.Examples out.

Layouts (see `detect_layout`):
    classes:   <root>/<class>/**/<image>             split by content hash
    presplit:  <root>/{train,val|eval}/<class>/**/<image>   splits taken as given

Every file found is accounted for in a manifest written beside the examples
(`<examples uri>/manifest/`, JSON lines: relative path, content hash, label,
split, status, reason) and summarised in `<examples uri>/ingest_summary.json`
and in the artifact's custom properties. Files are read, normalised and
de-duplicated inside the Beam pipeline, so ingestion scales with the runner.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import proto_utils

from components import image_files
from trainer import features

INGEST_OPTIONS_KEY = "ingest_options"
MIN_IMAGES_PER_CLASS_KEY = "min_images_per_class"
MANIFEST_DIR = "manifest"
SUMMARY_FILE = "ingest_summary.json"
_MANIFEST_DIR_KEY = "_manifest_dir"

LAYOUT_CLASSES = "classes"
LAYOUT_PRESPLIT = "presplit"
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
_EVAL_FOLDER_NAMES = ("val", "eval")


class IngestionError(ValueError):
    """The image folder cannot make a training set (one message says why)."""


# --------------------------------------------------------------------------- layout


def detect_layout(data_root: str) -> str:
    """Returns LAYOUT_PRESPLIT if `data_root` holds train/ and val/ (or eval/), else LAYOUT_CLASSES."""
    names = set(tf.io.gfile.listdir(data_root))
    names = {name.rstrip("/") for name in names}
    if TRAIN_SPLIT in names and names & set(_EVAL_FOLDER_NAMES):
        return LAYOUT_PRESPLIT
    return LAYOUT_CLASSES


def make_input_config(data_root: str, layout: str | None = None) -> example_gen_pb2.Input:
    """Input splits for `layout`, or for the layout found under `data_root` if None.

    A given layout lists nothing (an object store need not be reachable when a
    pipeline is compiled); a given LAYOUT_PRESPLIT means train/ and val/.
    """
    if layout not in (None, LAYOUT_CLASSES, LAYOUT_PRESPLIT):
        raise ValueError(f"layout must be {LAYOUT_CLASSES!r} or {LAYOUT_PRESPLIT!r}, got {layout!r}")
    if (layout or detect_layout(data_root)) == LAYOUT_PRESPLIT:
        eval_folder = _EVAL_FOLDER_NAMES[0]
        if layout is None:
            names = {name.rstrip("/") for name in tf.io.gfile.listdir(data_root)}
            eval_folder = next(name for name in _EVAL_FOLDER_NAMES if name in names)
        return example_gen_pb2.Input(
            splits=[
                example_gen_pb2.Input.Split(name=TRAIN_SPLIT, pattern=f"{TRAIN_SPLIT}/*"),
                example_gen_pb2.Input.Split(name=EVAL_SPLIT, pattern=f"{eval_folder}/*"),
            ]
        )
    return example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="all", pattern="*")])


def make_output_config(
    input_config: example_gen_pb2.Input, eval_percent: int
) -> example_gen_pb2.Output:
    """Train/eval by content hash for a single input split; given splits otherwise."""
    if len(input_config.splits) > 1:
        return example_gen_pb2.Output()
    return example_gen_pb2.Output(
        split_config=example_gen_pb2.SplitConfig(
            splits=[
                example_gen_pb2.SplitConfig.Split(name=TRAIN_SPLIT, hash_buckets=100 - eval_percent),
                example_gen_pb2.SplitConfig.Split(name=EVAL_SPLIT, hash_buckets=eval_percent),
            ],
            partition_feature_name=features.HASH_KEY,
        )
    )


def _pattern_root(input_base: str, split_pattern: str) -> str:
    """The folder whose subfolders are the classes, for a pattern like 'train/*'."""
    if not split_pattern.endswith("*"):
        raise IngestionError(f"split pattern {split_pattern!r} must end with '*'")
    return os.path.join(input_base, os.path.dirname(split_pattern))


def find_files(input_base: str, split_pattern: str) -> Iterator[image_files.FoundFile]:
    """Every file under the split's class root, relative paths taken from `input_base`."""
    root = _pattern_root(input_base, split_pattern)
    prefix = os.path.relpath(root, input_base)
    for found in image_files.walk_image_folder(root):
        if prefix == ".":
            yield found
            continue
        same_file_as = found.same_file_as and f"{prefix}/{found.same_file_as}"
        yield dataclasses.replace(
            found, relative_path=f"{prefix}/{found.relative_path}", same_file_as=same_file_as
        )


# ---------------------------------------------------------------------- Beam parts


def _to_example(ingested: image_files.IngestedFile) -> tf.train.Example:
    def bytes_feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                features.IMAGE_KEY: bytes_feature(ingested.image_bytes),
                features.LABEL_KEY: bytes_feature(ingested.label.encode()),
                features.PATH_KEY: bytes_feature(ingested.relative_path.encode()),
                features.HASH_KEY: bytes_feature(ingested.content_hash.encode()),
            }
        )
    )


def _has_image(ingested: image_files.IngestedFile) -> bool:
    return ingested.status in (image_files.FileStatus.KEPT, image_files.FileStatus.CONVERTED)


def _resolve_duplicates(
    keyed: tuple[str, Iterable[image_files.IngestedFile]],
) -> Iterator[image_files.IngestedFile]:
    """Keeps one copy of identical content; reports the others.

    Copies under one label: the first by path is kept, the rest are DUPLICATE.
    Copies under different labels are a conflict nobody can settle here, so
    every copy is SKIPPED, each reason naming the others.
    """
    _, group = keyed
    group = sorted(group, key=lambda ingested: ingested.relative_path)
    usable = [ingested for ingested in group if _has_image(ingested)]
    yield from (ingested for ingested in group if not _has_image(ingested))
    if not usable:
        return
    labels = sorted({ingested.label for ingested in usable})
    if len(labels) > 1:
        for copy in usable:
            others = ", ".join(
                f"{other.relative_path} ({other.label})" for other in usable if other is not copy
            )
            yield _without_image(
                copy, image_files.FileStatus.SKIPPED, f"skipped: label conflict: same content as {others}"
            )
        return
    first, *copies = usable
    yield first
    for copy in copies:
        yield _without_image(
            copy, image_files.FileStatus.DUPLICATE, f"duplicate: same content as {first.relative_path}"
        )


def _without_image(
    ingested: image_files.IngestedFile, status: image_files.FileStatus, reason: str
) -> image_files.IngestedFile:
    return dataclasses.replace(
        ingested, status=status, reason=reason, image_bytes=b"", image_format="", width=0, height=0
    )


def _manifest_row(ingested: image_files.IngestedFile, split_pattern: str) -> str:
    return json.dumps(
        {
            "path": ingested.relative_path,
            "content_hash": ingested.content_hash,
            "label": ingested.label,
            "split_pattern": split_pattern,
            "status": ingested.status.value,
            "reason": ingested.reason,
        },
        sort_keys=True,
    )


def _dedup_key(ingested: image_files.IngestedFile) -> tuple[str, image_files.IngestedFile]:
    return (ingested.content_hash or f"path:{ingested.relative_path}", ingested)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ImageFolderToExample(  # pylint: disable=invalid-name
    pipeline: beam.Pipeline, exec_properties: dict[str, Any], split_pattern: str
) -> beam.pvalue.PCollection:
    """Reads, normalises and de-duplicates one split's files; writes its manifest."""
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    options = image_files.IngestOptions(**json.loads(exec_properties[INGEST_OPTIONS_KEY]))
    found = list(find_files(input_base, split_pattern))
    logging.info("Found %d files under %s/%s", len(found), input_base, split_pattern)
    accounted = (
        pipeline
        | "ListFiles" >> beam.Create(found)
        | "Spread" >> beam.Reshuffle()
        | "Ingest" >> beam.Map(image_files.ingest_file, options)
        | "KeyByHash" >> beam.Map(_dedup_key)
        | "GroupByHash" >> beam.GroupByKey()
        | "Deduplicate" >> beam.FlatMap(_resolve_duplicates)
    )
    shard_name = hashlib.sha256(split_pattern.encode()).hexdigest()[:8]
    _ = (
        accounted
        | "ToManifestRow" >> beam.Map(_manifest_row, split_pattern)
        | "WriteManifest"
        >> beam.io.WriteToText(
            os.path.join(exec_properties[_MANIFEST_DIR_KEY], f"manifest-{shard_name}"),
            file_name_suffix=".jsonl",
        )
    )
    return (
        accounted
        | "KeepImages" >> beam.Filter(_has_image)
        | "ToExample" >> beam.Map(_to_example)
    )


# ------------------------------------------------------------------ summary checks


def read_manifest(examples_uri: str) -> Iterator[dict[str, Any]]:
    """Streams the manifest rows an ImageFolderExampleGen run wrote."""
    for path in sorted(tf.io.gfile.glob(os.path.join(examples_uri, MANIFEST_DIR, "*.jsonl"))):
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def summarize_manifest(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status and images per class; lists skipped files with reasons."""
    by_status: collections.Counter[str] = collections.Counter()
    per_class: collections.Counter[str] = collections.Counter()
    not_used: list[dict[str, str]] = []
    for row in rows:
        by_status[row["status"]] += 1
        if row["status"] in (image_files.FileStatus.KEPT, image_files.FileStatus.CONVERTED):
            per_class[row["label"]] += 1
        elif row["status"] != image_files.FileStatus.IGNORED:
            not_used.append({"path": row["path"], "status": row["status"], "reason": row["reason"]})
    return {
        "files_seen": sum(by_status.values()),
        "by_status": {status.value: by_status[status.value] for status in image_files.FileStatus},
        "images_per_class": dict(sorted(per_class.items())),
        "not_used": sorted(not_used, key=lambda row: row["path"]),
    }


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


# ------------------------------------------------------------------- TFX wiring


class Executor(BaseExampleGenExecutor):
    """Runs the Beam ingestion, then writes and checks the summary."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:  # noqa: N802 (TFX API)
        return _ImageFolderToExample

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY]
        )
        exec_properties = {
            **exec_properties,
            _MANIFEST_DIR_KEY: os.path.join(examples.uri, MANIFEST_DIR),
        }
        super().Do(input_dict, output_dict, exec_properties)
        summary = summarize_manifest(read_manifest(examples.uri))
        with tf.io.gfile.GFile(os.path.join(examples.uri, SUMMARY_FILE), "w") as f:
            json.dump(summary, f, indent=2)
        for status, count in summary["by_status"].items():
            examples.set_int_custom_property(f"files_{status}", count)
        examples.set_string_custom_property(
            "images_per_class", json.dumps(summary["images_per_class"])
        )
        check_classes(summary["images_per_class"], exec_properties[MIN_IMAGES_PER_CLASS_KEY])


class Driver(example_gen_driver.FileBasedDriver):
    """Fingerprints the whole folder tree, not just the pattern's top level.

    TFX's FileBasedDriver fingerprints only what the split pattern matches (the
    class folders), so an image edited in place would not invalidate the cache.
    """

    def resolve_exec_properties(self, exec_properties, pipeline_info, component_info):
        exec_properties = super().resolve_exec_properties(
            exec_properties, pipeline_info, component_info
        )
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config
        )
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        exec_properties[example_gen_utils.FINGERPRINT_PROPERTY_NAME] = tree_fingerprint(
            input_base, [split.pattern for split in input_config.splits]
        )
        return exec_properties


def tree_fingerprint(input_base: str, split_patterns: Iterable[str]) -> str:
    """A digest of every file's path, size and modification time under the splits."""
    digest = hashlib.sha256()
    for pattern in split_patterns:
        for found in find_files(input_base, pattern):
            stat = tf.io.gfile.stat(found.path)
            digest.update(f"{found.relative_path}\0{stat.length}\0{stat.mtime_nsec}\n".encode())
    return f"sha256:{digest.hexdigest()}"


class ImageFolderExampleGenSpec(types.ComponentSpec):
    """FileBasedExampleGen's parameters plus ingestion options."""

    PARAMETERS = {
        standard_component_specs.INPUT_BASE_KEY: ExecutionParameter(type=str),
        standard_component_specs.INPUT_CONFIG_KEY: ExecutionParameter(type=example_gen_pb2.Input),
        standard_component_specs.OUTPUT_CONFIG_KEY: ExecutionParameter(
            type=example_gen_pb2.Output
        ),
        standard_component_specs.OUTPUT_DATA_FORMAT_KEY: ExecutionParameter(type=int),
        standard_component_specs.OUTPUT_FILE_FORMAT_KEY: ExecutionParameter(type=int),
        standard_component_specs.RANGE_CONFIG_KEY: ExecutionParameter(
            type=range_config_pb2.RangeConfig, optional=True
        ),
        INGEST_OPTIONS_KEY: ExecutionParameter(type=str),
        MIN_IMAGES_PER_CLASS_KEY: ExecutionParameter(type=int),
    }
    INPUTS = {}
    OUTPUTS = {
        standard_component_specs.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    }


class ImageFolderExampleGen(FileBasedExampleGen):
    """Ingests an image folder into TFRecords of tf.Examples.

    Subclasses FileBasedExampleGen so orchestrators (Kubeflow V2 included) treat
    it as a file-based ExampleGen: span resolution, fingerprints and caching.
    """

    SPEC_CLASS = ImageFolderExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
    DRIVER_CLASS = Driver

    def __init__(
        self,
        input_base: str,
        input_config: example_gen_pb2.Input,
        output_config: example_gen_pb2.Output,
        ingest_options: image_files.IngestOptions = image_files.IngestOptions(),
        min_images_per_class: int = 2,
        range_config: range_config_pb2.RangeConfig | None = None,
    ) -> None:
        """Creates the component.

        Args:
            input_base: The image folder (local path or object-store URI).
            input_config: Input splits; see `make_input_config`.
            output_config: Output splits; see `make_output_config`.
            ingest_options: Normalisation limits for each image.
            min_images_per_class: A class with fewer usable images stops the run.
            range_config: Which spans to read, for `{SPAN}` patterns.
        """
        ingest_options.validate()
        if min_images_per_class < 1:
            raise ValueError(f"min_images_per_class must be >= 1, got {min_images_per_class}")
        spec = ImageFolderExampleGenSpec(
            input_base=input_base,
            input_config=input_config,
            output_config=output_config,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            range_config=range_config,
            ingest_options=json.dumps(dataclasses.asdict(ingest_options), sort_keys=True),
            min_images_per_class=min_images_per_class,
            examples=types.Channel(type=standard_artifacts.Examples),
        )
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)


def precheck_data_root(data_root: str) -> None:
    """Fast structural check before any pipeline work (no image is decoded).

    Raises:
        IngestionError: The folder is missing, or fewer than two class folders
            hold files with image extensions.
    """
    if not tf.io.gfile.isdir(data_root):
        raise IngestionError(f"data folder {data_root!r} does not exist or is not a folder")
    input_config = make_input_config(data_root)
    for split in input_config.splits:
        root = _pattern_root(data_root, split.pattern)
        labels_with_images = set()
        for found in image_files.walk_image_folder(root):
            if found.label not in labels_with_images and image_files.ignore_reason(
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
