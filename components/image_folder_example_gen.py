"""ImageFolderExampleGen: a folder of labelled images in, tf.Examples out.

Layouts, spans and the manifest summary follow `components/image_folder.py`;
each file follows `components/file_outcome.py` (all pure Python, shared with
`transferline scan`). Every file found is accounted for in a manifest written
beside the examples (`<examples uri>/manifest/`, JSON lines: relative path,
content hash, label, split, status, reason) and summarised in
`<examples uri>/ingest_summary.json` and in the artifact's custom properties.

The Beam graph streams: files are listed and hashed (cheap, no decoding),
grouped by content hash (small records only), and each distinct content is
decoded once, straight into the TFRecord writers. No step holds every image,
so memory stays flat as the folder grows, and the work spreads over the
runner's workers (`--direct_num_workers`, Flink, Spark, Dataflow).

While the graph runs, the executor reports progress (`trainer/progress_events.py`)
from the live tally of its Beam counters, and when it ends the final counts from
Beam's own metrics (see `components/image_folder_beam.py`): files listed, then
hashed, then accounted for, out of the files the listing found.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen import write_split
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import proto_utils

from components import file_systems, image_folder, image_folder_beam
from components.config import IngestConfig
from trainer import features, progress_events

INGEST_CONFIG_KEY = "ingest_config"
MANIFEST_DIR = "manifest"
SUMMARY_FILE = "ingest_summary.json"
_MANIFEST_DIR_KEY = "_manifest_dir"
_MANIFEST_FILE_PREFIX = "manifest"
_TFRECORD_FILE_NAME = "data_tfrecord"  # TFX's own name (write_split.DEFAULT_FILE_NAME).
_PROGRESS_SECONDS = 1.0
"""How often the executor reads the live counts while the graph runs."""
_EXECUTOR_SETTINGS = ("max_side", "max_pixels", "jpeg_quality", "min_images_per_class")
"""The IngestConfig settings the executor reads from its `ingest_config` exec property.

The split shares and the span reach it through the output and range configs; the
rest (the data gate's limits, the span window) are left out, so that changing one
does not invalidate a cached ingestion."""


# --------------------------------------------------------------------------- layout


def make_input_config(data_root: str, layout: str | None = None) -> example_gen_pb2.Input:
    """Input splits for `layout`, or for the layout found under `data_root` if None.

    A given layout lists nothing (an object store need not be reachable when a
    pipeline is compiled); a given presplit layout means train/ and val/.

    Raises:
        ValueError: `layout` is not one of LAYOUTS.
    """
    if layout is None:
        layout, eval_folder = image_folder.detect_layout(data_root)
    else:
        eval_folder = image_folder.EVAL_FOLDER_NAMES[0]
    return example_gen_pb2.Input(
        splits=[
            example_gen_pb2.Input.Split(name=split.name, pattern=split.pattern)
            for split in image_folder.split_specs(layout, eval_folder)
        ]
    )


def make_output_config(
    input_config: example_gen_pb2.Input, ingest: IngestConfig
) -> example_gen_pb2.Output:
    """Train/eval(/test) by content hash for a single input split; given splits otherwise.

    The shares are `ingest.eval_percent` and `ingest.test_percent`
    (see `image_folder.hash_buckets`).
    """
    if len(input_config.splits) > 1:
        return example_gen_pb2.Output()
    splits = [
        example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
        for name, buckets in image_folder.hash_buckets(ingest)
    ]
    return example_gen_pb2.Output(
        split_config=example_gen_pb2.SplitConfig(
            splits=splits, partition_feature_name=features.HASH_KEY
        )
    )


def make_range_config(span: int) -> range_config_pb2.RangeConfig | None:
    """A RangeConfig reading exactly `span`, or None (0) for TFX's default: the latest."""
    if span == 0:
        return None
    return range_config_pb2.RangeConfig(
        static_range=range_config_pb2.StaticRange(start_span_number=span, end_span_number=span)
    )


# ------------------------------------------------------------ exec properties


def ingest_config_property(config: IngestConfig) -> str:
    """The `ingest_config` exec property: the settings the executor reads, as JSON."""
    return json.dumps({name: getattr(config, name) for name in _EXECUTOR_SETTINGS}, sort_keys=True)


def _ingest_config(exec_properties: dict[str, Any]) -> IngestConfig:
    """The IngestConfig an `ingest_config` exec property holds (its other settings default)."""
    return IngestConfig(**json.loads(exec_properties[INGEST_CONFIG_KEY])).validate()


# ------------------------------------------------------------------ summary checks


def read_manifest(examples_uri: str) -> Iterator[dict[str, Any]]:
    """Streams the manifest rows an ImageFolderExampleGen run wrote."""
    for path in sorted(tf.io.gfile.glob(os.path.join(examples_uri, MANIFEST_DIR, "*.jsonl"))):
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


# ------------------------------------------------------------------- progress


def ingestion_progress(counts: dict[str, int]) -> progress_events.Progress:
    """Where ingestion stands, from its counters: listing, then hashing, then accounting."""
    found = counts[image_folder_beam.FILES_FOUND]
    hashed = counts[image_folder_beam.FILES_HASHED]
    accounted = counts[image_folder_beam.FILES_ACCOUNTED]
    if not hashed and not accounted:
        return progress_events.Progress("listed", found)
    if hashed < found:
        return progress_events.Progress("hashed", hashed, found)
    return progress_events.Progress("accounted for", accounted, found)


class _ProgressWatcher(threading.Thread):
    """Reports the live tally of run `token` every `_PROGRESS_SECONDS`, while it changes."""

    def __init__(self, token: str) -> None:
        super().__init__(name="ingestion-progress", daemon=True)
        self._token = token
        self._stopped = threading.Event()

    def run(self) -> None:
        last = None
        while not self._stopped.wait(_PROGRESS_SECONDS):
            event = ingestion_progress(image_folder_beam.live_counts(self._token))
            if event != last and event.done:
                progress_events.report(event)
                last = event

    def stop(self) -> None:
        self._stopped.set()
        self.join()
        image_folder_beam.forget_counts(self._token)


# ------------------------------------------------------------------- TFX wiring


def _parse_configs(
    exec_properties: dict[str, Any],
) -> tuple[example_gen_pb2.Input, example_gen_pb2.Output]:
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config
    )
    output_config = example_gen_pb2.Output()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config
    )
    return input_config, output_config


class Executor(BaseExampleGenExecutor):
    """Runs the Beam ingestion in one graph for all splits, then writes and checks the summary."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:  # noqa: N802 (TFX API)
        """Not used: GenerateExamplesByBeam reads every split in one graph."""
        raise NotImplementedError("ImageFolderExampleGen ingests all splits in one Beam graph")

    def GenerateExamplesByBeam(  # noqa: N802 (TFX API)
        self,
        pipeline: beam.Pipeline,
        exec_properties: dict[str, Any],
        progress_token: str = "",
    ) -> dict[str, beam.pvalue.PCollection]:
        """All splits in one graph, so a content hash is settled across splits.

        Args:
            pipeline: The Beam pipeline to add the graph to.
            exec_properties: The executor's properties.
            progress_token: Names this run's live progress tally (see `_ProgressWatcher`).

        Returns:
            Serialized tf.Examples by output split name.
        """
        input_config, output_config = _parse_configs(exec_properties)
        split_names = example_gen_utils.generate_output_split_names(input_config, output_config)
        given = len(input_config.splits) > 1
        splits = [(split.name if given else "", split.pattern) for split in input_config.splits]
        hash_splits = [] if given else [
            (split.name, split.hash_buckets) for split in output_config.split_config.splits
        ]
        account = image_folder_beam.AccountForFiles  # pylint: disable=no-value-for-parameter
        resolved = pipeline | "Account" >> account(
            exec_properties[standard_component_specs.INPUT_BASE_KEY],
            splits,
            _ingest_config(exec_properties),
            os.path.join(exec_properties[_MANIFEST_DIR_KEY], _MANIFEST_FILE_PREFIX),
            hash_splits,
            progress_token,
        )
        images = resolved | "KeepImages" >> beam.Filter(image_folder_beam.has_image)
        partitions = images | "BySplit" >> beam.Partition(
            image_folder_beam.SplitIndex(split_names), len(split_names)
        )
        return {
            name: partitions[index]
            | f"ToExample[{name}]" >> beam.Map(image_folder_beam.serialized_example)
            for index, name in enumerate(split_names)
        }

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        """Writes the splits, the manifest and the summary; stops on unusable data.

        Unlike BaseExampleGenExecutor.Do, the splits are written without a
        reshuffle: on a single machine that shuffle holds every encoded image
        in memory, and the content-hash grouping already leaves them in
        random order.

        Raises:
            image_folder.IngestionError: Fewer than two classes, or a class below
                `min_images_per_class`.
        """
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY]
        )
        exec_properties = {
            **exec_properties,
            _MANIFEST_DIR_KEY: os.path.join(examples.uri, MANIFEST_DIR),
        }
        input_config, output_config = _parse_configs(exec_properties)
        split_names = example_gen_utils.generate_output_split_names(input_config, output_config)
        examples.split_names = artifact_utils.encode_split_names(split_names)
        self._write_examples(examples, exec_properties)
        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(
            examples, write_split.to_file_format_str(example_gen_pb2.FORMAT_TFRECORDS_GZIP)
        )
        # The span as an artifact property too (the driver sets only the custom
        # property), so TFX's span resolver functions and StatisticsGen see it.
        examples.span = int(exec_properties.get(example_gen_utils.SPAN_PROPERTY_NAME) or 0)
        version = exec_properties.get(example_gen_utils.VERSION_PROPERTY_NAME)
        if version is not None:
            examples.version = int(version)

        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        folders = [
            folder
            for split in input_config.splits
            for folder in image_folder.class_folders(input_base, split.pattern)
        ]
        summary = image_folder.summarize_manifest(read_manifest(examples.uri), folders)
        summary["span"] = examples.span
        with tf.io.gfile.GFile(os.path.join(examples.uri, SUMMARY_FILE), "w") as f:
            json.dump(summary, f, indent=2)
        for status, count in summary["by_status"].items():
            examples.set_int_custom_property(f"files_{status}", count)
        examples.set_string_custom_property(
            "images_per_class", json.dumps(summary["images_per_class"])
        )
        for warning in summary["warnings"]:
            logging.warning("ImageFolderExampleGen: %s", warning)
        image_folder.check_classes(
            summary["images_per_class"], _ingest_config(exec_properties).min_images_per_class
        )


    def _write_examples(self, examples: types.Artifact, exec_properties: dict[str, Any]) -> None:
        """Runs the Beam graph, reporting its progress live, then its final counts."""
        token = uuid.uuid4().hex
        watcher = _ProgressWatcher(token)
        watcher.start()
        try:
            with self._make_beam_pipeline() as pipeline:
                generated = self.GenerateExamplesByBeam(pipeline, exec_properties, token)
                for name, records in generated.items():
                    split_uri = artifact_utils.get_split_uri([examples], name)
                    _ = records | f"WriteSplit[{name}]" >> image_folder_beam.WriteExamples(
                        os.path.join(split_uri, _TFRECORD_FILE_NAME)
                    )
        finally:
            watcher.stop()
        try:
            counts = image_folder_beam.committed_counts(pipeline.result)
        except NotImplementedError:  # A runner that keeps no committed metrics.
            return
        progress_events.report(ingestion_progress(counts))


class Driver(example_gen_driver.FileBasedDriver):
    """Fingerprints the whole folder tree, not just the pattern's top level.

    TFX's FileBasedDriver fingerprints only what the split pattern matches (the
    class folders), so an image edited in place would not invalidate the cache.
    The span is resolved first (by the parent), so only that span is walked.
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
    """A digest of every file's path, size and modification time under the splits.

    Local files are stat'ed with `os`, object-store files with `tf.io.gfile`
    (see components/file_systems.py).
    """
    fs = file_systems.for_path(input_base)
    digest = hashlib.sha256()
    for pattern in split_patterns:
        for found in image_folder.find_files(input_base, pattern):
            try:
                size, mtime_ns = fs.state(found.path)
                state = f"{size}\0{mtime_ns}"
            except OSError:  # A broken link: ingestion reports it, not the driver.
                state = "unreadable"
            digest.update(f"{found.relative_path}\0{state}\n".encode())
    return f"sha256:{digest.hexdigest()}"


class ImageFolderExampleGenSpec(types.ComponentSpec):
    """FileBasedExampleGen's parameters plus the ingestion settings."""

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
        INGEST_CONFIG_KEY: ExecutionParameter(type=str),
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
        ingest: IngestConfig = IngestConfig(),
        range_config: range_config_pb2.RangeConfig | None = None,
    ) -> None:
        """Creates the component.

        Args:
            input_base: The image folder (local path or object-store URI).
            input_config: Input splits; see `make_input_config`.
            output_config: Output splits; see `make_output_config`.
            ingest: Ingestion settings (validated here); `ingest_config_property`
                picks the ones the executor reads.
            range_config: Which spans to read, for `{SPAN}` patterns; see
                `make_range_config`. None reads the latest span.
        """
        ingest.validate()
        spec = ImageFolderExampleGenSpec(
            input_base=input_base,
            input_config=input_config,
            output_config=output_config,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            range_config=range_config,
            ingest_config=ingest_config_property(ingest),
            examples=types.Channel(type=standard_artifacts.Examples),
        )
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
