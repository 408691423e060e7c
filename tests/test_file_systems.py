"""Object-store data roots: the same ingestion rules through tf.io.gfile, on TF's ram:// files.

`ram://` is TensorFlow's built-in in-memory file system: it lives in this
process only, so everything reading it here runs in this process (scan with
one worker, Beam's DirectRunner in its default in-memory mode, LocalDagRunner).
"""

import json
import os
import uuid

import pytest
import tensorflow as tf
from tfx import v1 as tfx
from tfx.orchestration import metadata

from components import (
    file_outcome,
    file_systems,
    folder_walk,
    image_folder,
    image_folder_example_gen,
)
from components.config import IngestConfig
from pipeline import scan
from tests.conftest import CLASS_COLOURS, encode, make_image
from tests.test_image_folder_example_gen import _read_split, _run_executor


def _folder_files() -> dict[str, bytes]:
    """Tiny class images with every kind of file the rules tell apart."""
    files = {}
    for class_index, (label, colour) in enumerate(CLASS_COLOURS.items()):
        for n in range(4):
            image_format, suffix = ("PNG", "png") if n % 2 else ("JPEG", "jpg")
            files[f"{label}/{n:03d}.{suffix}"] = encode(
                make_image(colour, class_index * 100 + n), image_format)
    good_jpeg = files["green/000.jpg"]
    files.update({
        "red/nested/deep.jpg": encode(make_image(CLASS_COLOURS["red"], 77), "JPEG"),
        "red/copy_of_000.jpg": files["red/000.jpg"],  # duplicate
        "green/broken.jpg": good_jpeg[: len(good_jpeg) // 2],  # truncated: skipped
        "blue/empty.png": b"",  # skipped
        "blue/gray.png": encode(make_image(CLASS_COLOURS["blue"], 5).convert("L")),  # converted
        ".DS_Store": b"\0\0",  # ignored: system file
        "red/Thumbs.db": b"\0",  # ignored: system file
        "green/.hidden.jpg": good_jpeg,  # ignored: hidden file
        "blue/notes.txt": b"notes",  # ignored: not an image
    })
    return files


EXPECTED_BY_STATUS = {"kept": 13, "converted": 1, "skipped": 2, "ignored": 4, "duplicate": 1}


def _write(root: str, files: dict[str, bytes]) -> str:
    for relative, data in files.items():
        path = f"{root}/{relative}"
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
    return root


@pytest.fixture
def ram_root():
    root = f"ram://transferline-test-{uuid.uuid4().hex}/images"
    yield root
    if tf.io.gfile.exists(root):
        tf.io.gfile.rmtree(root)


@pytest.fixture
def twin_folders(tmp_path, ram_root):
    """The same folder on local disk and in ram://."""
    files = _folder_files()
    return _write(str(tmp_path / "images"), files), _write(ram_root, files)


# ----------------------------------------------------------------------- the seam


def test_paths_pick_their_file_system():
    assert file_systems.for_path("/data/images") is file_systems.LOCAL
    assert file_systems.for_path("images/cats") is file_systems.LOCAL
    for uri in ("gs://bucket/images", "s3://bucket/images", "ram://x/images"):
        assert file_systems.for_path(uri) is not file_systems.LOCAL
    assert file_systems.for_path("C:/images") is file_systems.LOCAL
    assert file_systems.for_path("/a/gs://b") is file_systems.LOCAL


def test_listing_trusts_trailing_slashes_only_where_they_mark_every_folder():
    asked = []

    def isdir(path):
        asked.append(path)
        return path.endswith("/cats")

    names = ["dogs/", "a.jpg", "cats"]
    trusted = file_systems.entries_from_listing("gs://b/images/", names, isdir, True)
    assert [(e.name, e.path, e.is_dir) for e in trusted] == [
        ("a.jpg", "gs://b/images/a.jpg", False), ("cats", "gs://b/images/cats", False),
        ("dogs", "gs://b/images/dogs", True)]
    assert asked == []
    asked_each = file_systems.entries_from_listing("ram://images", names, isdir, False)
    assert [e.is_dir for e in asked_each] == [False, True, True]
    assert asked == ["ram://images/a.jpg", "ram://images/cats"]


def test_walk_finds_the_same_files_in_ram_as_on_disk(twin_folders):
    local, ram = twin_folders
    on_disk = [(f.relative_path, f.label) for f in folder_walk.walk_image_folder(local)]
    in_ram = [(f.relative_path, f.label) for f in folder_walk.walk_image_folder(ram)]
    assert in_ram == on_disk
    assert len(in_ram) == sum(EXPECTED_BY_STATUS.values())
    found = next(f for f in folder_walk.walk_image_folder(ram) if f.relative_path == "red/000.jpg")
    assert found.path == f"{ram}/red/000.jpg"


def test_object_store_read_errors_are_skips_with_a_reason(ram_root):
    tf.io.gfile.makedirs(f"{ram_root}/cats")
    missing = folder_walk.FoundFile(f"{ram_root}/cats/gone.jpg", "cats/gone.jpg", "cats")
    result = file_outcome.ingest_file(missing)
    assert result.status is file_outcome.FileStatus.SKIPPED
    assert result.reason.startswith("skipped: unreadable file (FileNotFoundError: ")
    assert file_outcome.screen_file(missing).outcome.reason == result.reason
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        file_systems.for_path(missing.path).state(missing.path)


def test_listing_a_missing_object_store_folder_names_it(ram_root):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(folder_walk.walk_image_folder(f"{ram_root}/nowhere"))
    with pytest.raises(image_folder.IngestionError, match="does not exist"):
        image_folder.precheck_data_root(f"{ram_root}/nowhere")


# ------------------------------------------------------------------- scan and run


def test_scan_of_ram_folder_matches_the_same_folder_on_disk(twin_folders):
    local, ram = twin_folders
    # ram:// is visible to this process only.
    on_disk, in_ram = scan.scan_folder(local, workers=1), scan.scan_folder(ram, workers=1)

    assert in_ram["by_status"] == on_disk["by_status"] == EXPECTED_BY_STATUS
    assert in_ram["reconciles"] is True
    for key in ("files_seen", "images_per_class", "images_per_split", "duplicates",
                "skipped", "reasons", "image_sizes", "layout"):
        assert in_ram[key] == on_disk[key], key
    assert [row["path"] for row in in_ram["skipped"]] == ["blue/empty.png", "green/broken.jpg"]


def _manifest(examples_uri):
    return sorted(
        (row["path"], row["status"], row["content_hash"], row["split"], row["reason"])
        for row in image_folder_example_gen.read_manifest(examples_uri)
    )


def test_executor_ingests_a_ram_root_like_the_same_folder_on_disk(twin_folders, tmp_path):
    local, ram = twin_folders
    from_disk = _run_executor(local, tmp_path / "disk")
    from_ram = _run_executor(ram, tmp_path / "ram")

    assert _manifest(from_ram.uri) == _manifest(from_disk.uri)
    with tf.io.gfile.GFile(os.path.join(from_ram.uri, image_folder_example_gen.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["by_status"] == EXPECTED_BY_STATUS
    for split in ("train", "eval"):
        assert len(_read_split(from_ram, split)) == len(_read_split(from_disk, split))
    assert sum(len(_read_split(from_ram, s)) for s in ("train", "eval")) == 14


def test_tree_fingerprint_of_a_ram_root_sees_edits(twin_folders):
    _, ram = twin_folders
    before = image_folder_example_gen.tree_fingerprint(ram, ["*"])
    assert image_folder_example_gen.tree_fingerprint(ram, ["*"]) == before
    with tf.io.gfile.GFile(f"{ram}/red/nested/deep.jpg", "wb") as f:
        f.write(encode(make_image(CLASS_COLOURS["red"], 78, size=48), "JPEG"))
    assert image_folder_example_gen.tree_fingerprint(ram, ["*"]) != before


def test_local_dag_runner_ingests_a_ram_root(twin_folders, tmp_path):
    _, ram = twin_folders
    input_config = image_folder_example_gen.make_input_config(ram)
    example_gen = image_folder_example_gen.ImageFolderExampleGen(
        input_base=ram,
        input_config=input_config,
        output_config=image_folder_example_gen.make_output_config(
            input_config, IngestConfig(eval_percent=25)),
    ).with_id("ImageFolderExampleGen")
    metadata_path = str(tmp_path / "metadata.db")
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="ram-root",
        pipeline_root=str(tmp_path / "root"),
        components=[example_gen],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(metadata_path),
    ))

    with metadata.Metadata(metadata.sqlite_metadata_connection_config(metadata_path)) as store:
        (examples,) = store.store.get_artifacts_by_type("Examples")
    with open(os.path.join(examples.uri, image_folder_example_gen.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["by_status"] == EXPECTED_BY_STATUS
    assert summary["images_per_class"] == {"blue": 5, "green": 4, "red": 5}
    fingerprint = examples.custom_properties["input_fingerprint"].string_value
    assert fingerprint == image_folder_example_gen.tree_fingerprint(ram, ["*"])
