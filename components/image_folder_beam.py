"""The Beam side of ImageFolderExampleGen, free of TensorFlow.

Everything here runs on Beam workers, which then import only Beam, Pillow and
numpy: a worker process that imported TensorFlow would hold ~0.5 GiB more.
That is why tf.Examples are encoded by hand here (a test checks the bytes
against `tf.train.Example`) and why the TFRecord sink is our own:

* `AccountForFiles` lists, screens, groups by content hash and settles every
  file, writing the manifest; the images never pass a shuffle, so memory
  stays flat whatever the folder's size.
* `WriteExamples` writes TFRecord files in gzip format (what TFX's Examples
  artifact declares) at compression level 0: encoded images do not compress,
  and zlib's default level spends more time on them than decoding does.

Progress is counted with Beam counters (namespace `ImageFolderExampleGen`:
`files_found`, `files_hashed`, `files_accounted`), which Dataflow's monitoring
page shows while a job runs. Beam's local runners give a running pipeline's
counters to nobody until it ends (the FnApiRunner's progress requests are off
and their answers dropped), so each increment is also added to a tally in the
worker's own process (`live_counts`): on the default in-memory DirectRunner that
is the executor's process, which reads it while the graph runs. On other runners
the tally stays empty there and only the final counts, read from Beam's metrics
of the finished pipeline (`committed_counts`), are reported.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import struct
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from components import file_outcome, image_folder
from components.config import IngestConfig
from components.file_outcome import IngestedFile, ScreenedFile
from components.folder_walk import FoundFile

try:  # A C implementation, much faster than crcmod's (Beam's default).
    import google_crc32c

    def _crc32c(data: bytes) -> int:
        return google_crc32c.value(data)

except ImportError:  # pragma: no cover (google-crc32c comes with the pinned stack)
    import crcmod.predefined

    _crc32c = crcmod.predefined.mkPredefinedCrcFun("crc-32c")

GZIP_LEVEL = 0
"""Deflate level of the examples: stored blocks, a valid gzip stream at disk speed."""

PROGRESS_NAMESPACE = "ImageFolderExampleGen"
FILES_FOUND = "files_found"
FILES_HASHED = "files_hashed"
FILES_ACCOUNTED = "files_accounted"
"""The Beam counters of ingestion: listed, read and hashed, settled (manifest row written)."""
_COUNTERS = {
    name: Metrics.counter(PROGRESS_NAMESPACE, name)
    for name in (FILES_FOUND, FILES_HASHED, FILES_ACCOUNTED)
}
_tally: Counter[tuple[str, str]] = Counter()
_tally_lock = threading.Lock()


# ------------------------------------------------------------------ tf.Example


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_example(features: dict[str, bytes]) -> bytes:
    """A serialized tf.train.Example holding one bytes value per feature.

    Example{features: Features{feature: map<string, Feature{bytes_list:
    BytesList{value}}>}}, encoded field by field.
    """
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, _field(1, _field(1, value))))
        for key, value in sorted(features.items())
    )
    return _field(1, entries)


def example_features(ingested: IngestedFile) -> dict[str, bytes]:
    """The features of one ingested image; keys as in trainer/features.py."""
    from trainer import features  # Plain constants, no TensorFlow.

    return {
        features.IMAGE_KEY: ingested.image_bytes,
        features.LABEL_KEY: ingested.label.encode(),
        features.PATH_KEY: ingested.relative_path.encode(),
        features.HASH_KEY: ingested.content_hash.encode(),
    }


def serialized_example(ingested: IngestedFile) -> bytes:
    """The tf.train.Example of one ingested image, serialized."""
    return encode_example(example_features(ingested))


# ------------------------------------------------------------------- TFRecords


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(record: bytes) -> bytes:
    """One record framed as TFRecord: length, its CRC, data, its CRC."""
    length = struct.pack("<Q", len(record))
    return b"".join(
        (
            length, struct.pack("<I", _masked_crc(length)),
            record, struct.pack("<I", _masked_crc(record)),
        )
    )


class _GzipHandle:
    """A gzip stream over a Beam file handle; closing it closes both."""

    def __init__(self, raw: Any, level: int) -> None:
        self._raw = raw
        self._gzip = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0)

    def write(self, data: bytes) -> None:
        self._gzip.write(data)

    def close(self) -> None:
        self._gzip.close()
        self._raw.close()


class _GzipTFRecordSink(filebasedsink.FileBasedSink):
    """TFRecord files, gzip format at a chosen deflate level (Beam's sink fixes level 6)."""

    def __init__(self, file_path_prefix: str, level: int) -> None:
        super().__init__(
            file_path_prefix,
            coder=coders.BytesCoder(),
            file_name_suffix=".gz",
            mime_type="application/octet-stream",
            compression_type=CompressionTypes.UNCOMPRESSED,
        )
        self._level = level

    def open(self, temp_path: str) -> _GzipHandle:
        return _GzipHandle(super().open(temp_path), self._level)

    def write_encoded_record(self, file_handle: _GzipHandle, encoded_value: bytes) -> None:
        file_handle.write(tfrecord(encoded_value))


class WriteExamples(beam.PTransform):
    """Writes serialized examples as `<prefix>-SSSSS-of-NNNNN.gz` TFRecord (gzip) files."""

    def __init__(self, file_path_prefix: str, level: int = GZIP_LEVEL) -> None:
        super().__init__()
        self._sink = _GzipTFRecordSink(file_path_prefix, level)

    def expand(self, records: beam.PCollection) -> beam.pvalue.PDone:
        return records | beam.io.Write(self._sink)


# ------------------------------------------------------------- progress


def _count(name: str, token: str) -> None:
    """One more for Beam counter `name`, and for this process's tally of run `token`."""
    _COUNTERS[name].inc()
    if token:
        with _tally_lock:
            _tally[token, name] += 1


def live_counts(token: str) -> dict[str, int]:
    """The counts this process's workers added so far for run `token` (see the docstring)."""
    with _tally_lock:
        return {name: _tally[token, name] for name in _COUNTERS}


def forget_counts(token: str) -> None:
    """Drops the tally of run `token`."""
    with _tally_lock:
        for name in _COUNTERS:
            _tally.pop((token, name), None)


def committed_counts(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """A finished pipeline's ingestion counters, from Beam's own metrics (summed over steps)."""
    query = result.metrics().query(MetricsFilter().with_namespace(PROGRESS_NAMESPACE))
    counts = dict.fromkeys(_COUNTERS, 0)
    for counter in query["counters"]:
        if counter.key.metric.name in counts:
            counts[counter.key.metric.name] += counter.committed or 0
    return counts


# ------------------------------------------------------------- accounting


class HashSplitter:
    """Names a file's output split from its content hash, exactly as TFX's ExampleGen would."""

    def __init__(self, splits: Sequence[tuple[str, int]]) -> None:
        self._splits = list(splits)

    def __call__(self, ingested: IngestedFile) -> IngestedFile:
        if not ingested.content_hash:
            return ingested
        return dataclasses.replace(
            ingested, split=image_folder.hash_split(ingested.content_hash, self._splits)
        )


def has_image(ingested: IngestedFile) -> bool:
    """Beam filter: the file yields a training image."""
    return ingested.has_image


class SplitIndex:
    """Beam partition function: the index of an image's split among the output splits."""

    def __init__(self, split_names: Sequence[str]) -> None:
        self._index = {name: index for index, name in enumerate(split_names)}

    def __call__(self, ingested: IngestedFile, _: int) -> int:
        return self._index[ingested.split]


def _needs_decoding(screened: ScreenedFile, _: int) -> int:
    return 0 if screened.outcome is not None else 1


def _hash_key(screened: ScreenedFile) -> tuple[str, FoundFile]:
    return screened.content_hash, screened.found


def _settled_line(screened: ScreenedFile, token: str) -> str:
    return _resolved_line(screened.outcome, token)


def _resolved_line(ingested: IngestedFile, token: str) -> str:
    _count(FILES_ACCOUNTED, token)
    return _manifest_line(ingested)


def _screen(found: FoundFile, token: str) -> ScreenedFile:
    screened = file_outcome.screen_file(found)
    _count(FILES_HASHED, token)
    return screened


def _walk_split(split: tuple[str, str], input_base: str, token: str) -> Iterator[FoundFile]:
    name, pattern = split
    for found in image_folder.find_files(input_base, pattern, name):
        _count(FILES_FOUND, token)
        yield found


def _manifest_line(ingested: IngestedFile) -> str:
    return json.dumps(image_folder.manifest_row(ingested), sort_keys=True)


def _settle(
    keyed: tuple[str, Sequence[FoundFile]], config: IngestConfig
) -> Iterator[IngestedFile]:
    content_hash, copies = keyed
    return file_outcome.resolve_copies(copies, config, image_folder.SPLIT_ORDER, content_hash)


@beam.ptransform_fn
def AccountForFiles(  # noqa: N802 (a PTransform)
    pipeline: beam.Pipeline,
    input_base: str,
    splits: Sequence[tuple[str, str]],
    config: IngestConfig,
    manifest_prefix: str,
    hash_splits: Sequence[tuple[str, int]] = (),
    progress_token: str = "",
) -> beam.PCollection:
    """Lists, screens and settles every file of `splits` ((name, pattern) pairs).

    Files are hashed first (no decoding), grouped by hash (small records),
    then each distinct content is decoded once. With `hash_splits` ((name,
    hash buckets) pairs), a file's split follows its content hash as TFX's
    would; otherwise it is the given split it was found in. The manifest (one
    JSON line per file found) is written under `manifest_prefix`. Progress
    goes to the Beam counters, and to the tally of `progress_token` if given.

    Returns:
        The outcome of every hashed file, images included; files settled
        without decoding (ignored, unreadable) reach only the manifest.
    """
    screened = (
        pipeline
        | "Splits" >> beam.Create(list(splits))
        | "Walk" >> beam.FlatMap(_walk_split, input_base, progress_token)
        | "Spread" >> beam.Reshuffle()
        | "Screen" >> beam.Map(_screen, progress_token)
    )
    settled, to_decode = screened | "NeedsDecoding" >> beam.Partition(_needs_decoding, 2)
    resolved = (
        to_decode
        | "KeyByHash" >> beam.Map(_hash_key)
        | "GroupByHash" >> beam.GroupByKey()
        | "DecodeOncePerContent" >> beam.FlatMap(_settle, config)
    )
    if hash_splits:
        resolved = resolved | "SplitByHash" >> beam.Map(HashSplitter(hash_splits))
    # Only manifest lines meet in the Flatten: the images never leave their stage.
    _ = (
        (
            settled | "SettledRow" >> beam.Map(_settled_line, progress_token),
            resolved | "ResolvedRow" >> beam.Map(_resolved_line, progress_token),
        )
        | "AllRows" >> beam.Flatten()
        | "WriteManifest" >> beam.io.WriteToText(manifest_prefix, file_name_suffix=".jsonl")
    )
    return resolved
