"""ImageFolderExampleGen's executor and driver on real Beam, on tiny generated folders."""

import json
import os
import shutil

import pytest
import tensorflow as tf
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import image_folder
from components import image_folder_example_gen as gen
from components.config import IngestConfig
from tests.conftest import CLASS_COLOURS, encode, make_image, write_class_folder
from trainer import features


def _run_executor(data_root, tmp_path, min_images_per_class=2, test_percent=0, span=None,
                  input_config=None):
    ingest = IngestConfig(
        eval_percent=25, test_percent=test_percent, min_images_per_class=min_images_per_class)
    input_config = input_config or gen.make_input_config(str(data_root))
    if span is not None:  # What the driver does: fill the {SPAN} spec in.
        for split in input_config.splits:
            split.pattern = split.pattern.replace("{SPAN}", str(span))
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    exec_properties = {
        "input_base": str(data_root),
        "input_config": proto_utils.proto_to_json(input_config),
        "output_config": proto_utils.proto_to_json(
            gen.make_output_config(input_config, ingest)
        ),
        "output_data_format": example_gen_pb2.FORMAT_TF_EXAMPLE,
        "output_file_format": example_gen_pb2.FORMAT_TFRECORDS_GZIP,
        gen.INGEST_CONFIG_KEY: gen.ingest_config_property(ingest),
    }
    if span is not None:
        exec_properties["span"] = span
        exec_properties["version"] = None
    gen.Executor().Do({}, {"examples": [examples]}, exec_properties)
    return examples


def _read_split(examples, split):
    pattern = os.path.join(examples.uri, f"Split-{split}", "*")
    dataset = tf.data.TFRecordDataset(tf.io.gfile.glob(pattern), compression_type="GZIP")
    return [tf.train.Example.FromString(record.numpy()) for record in dataset]


def _value(example, key):
    return example.features.feature[key].bytes_list.value[0]


def test_every_file_is_accounted_for(tmp_path):
    data = write_class_folder(tmp_path / "images", per_class=8)
    shutil.copy(data / "red" / "000.jpg", data / "red" / "copy_of_000.jpg")
    shutil.copy(data / "red" / "001.png", data / "blue" / "red_in_blue.png")
    (data / "green" / "empty.png").write_bytes(b"")
    (data / "green" / ".DS_Store").write_bytes(b"\0\0")
    (data / "blue" / "nested").mkdir()
    (data / "blue" / "nested" / "deep.jpg").write_bytes(
        encode(make_image(CLASS_COLOURS["blue"], seed=77), "JPEG")
    )

    examples = _run_executor(data, tmp_path)

    rows = {row["path"]: row for row in gen.read_manifest(examples.uri)}
    assert len(rows) == 3 * 8 + 5
    assert rows["red/copy_of_000.jpg"]["status"] == "duplicate"
    assert "red/000.jpg" in rows["red/copy_of_000.jpg"]["reason"]
    for path, other in [("blue/red_in_blue.png", "red/001.png (red)"),
                        ("red/001.png", "blue/red_in_blue.png (blue)")]:
        assert rows[path]["status"] == "skipped"
        assert rows[path]["reason"] == f"skipped: label conflict: same content as {other}"
    assert rows["green/empty.png"]["status"] == "skipped"
    assert rows["green/.DS_Store"]["status"] == "ignored"
    assert rows["blue/nested/deep.jpg"]["status"] == "kept"

    train, eval_ = _read_split(examples, "train"), _read_split(examples, "eval")
    assert len(train) + len(eval_) == 3 * 8 + 1 - 1
    assert train and eval_
    paths = [_value(e, features.PATH_KEY).decode() for e in train + eval_]
    assert len(set(paths)) == len(paths)
    deep = next(e for e in train + eval_ if _value(e, features.PATH_KEY) == b"blue/nested/deep.jpg")
    assert _value(deep, features.LABEL_KEY) == b"blue"

    summary = json.loads((tmp_path / "examples" / gen.SUMMARY_FILE).read_text())
    by_status = summary["by_status"]
    assert summary["files_seen"] == sum(by_status.values()) == len(rows)
    assert by_status == {"kept": 24, "converted": 0, "skipped": 3, "ignored": 1, "duplicate": 1}
    assert summary["images_per_class"] == {"blue": 9, "green": 8, "red": 7}
    assert examples.get_int_custom_property("files_duplicate") == 1


def test_split_is_decided_by_content_hash(tmp_path):
    data = write_class_folder(tmp_path / "images", per_class=10)
    first = _run_executor(data, tmp_path / "first")
    for path in (data / "red").iterdir():  # same bytes under new names
        path.rename(path.with_name("renamed_" + path.name))
    second = _run_executor(data, tmp_path / "second")

    def eval_hashes(examples):
        return sorted(_value(e, features.HASH_KEY) for e in _read_split(examples, "eval"))

    assert eval_hashes(first) == eval_hashes(second)


def test_presplit_folders_are_taken_as_given(tmp_path):
    write_class_folder(tmp_path / "images" / "train", per_class=4)
    write_class_folder(tmp_path / "images" / "val", per_class=2, seed_offset=500)
    data = tmp_path / "images"
    assert image_folder.detect_layout(str(data))[0] == image_folder.LAYOUT_PRESPLIT

    examples = _run_executor(data, tmp_path)

    assert len(_read_split(examples, "train")) == 12
    eval_ = _read_split(examples, "eval")
    assert len(eval_) == 6
    assert all(_value(e, features.PATH_KEY).startswith(b"val/") for e in eval_)
    assert {_value(e, features.LABEL_KEY) for e in eval_} == {b"red", b"green", b"blue"}


def test_one_usable_class_stops_the_run(tmp_path):
    data = tmp_path / "images"
    write_class_folder(data, per_class=3)
    for label in ("green", "blue"):
        for path in (data / label).iterdir():
            path.write_bytes(b"<html>404</html>")
    with pytest.raises(image_folder.IngestionError, match=r"at least two classes.*found 1 \(red\)"):
        _run_executor(data, tmp_path)


def test_small_classes_stop_the_run(tmp_path):
    data = write_class_folder(tmp_path / "images", per_class=3)
    expected = r"min_images_per_class=5: blue \(3\), green \(3\)"
    with pytest.raises(image_folder.IngestionError, match=expected):
        _run_executor(data, tmp_path, min_images_per_class=5)


def test_tree_fingerprint_sees_nested_edits(tmp_path):
    data = write_class_folder(tmp_path / "images", per_class=2)
    (data / "red" / "nested").mkdir()
    nested = data / "red" / "nested" / "x.png"
    nested.write_bytes(encode(make_image(CLASS_COLOURS["red"], seed=1)))
    before = gen.tree_fingerprint(str(data), ["*"])
    assert gen.tree_fingerprint(str(data), ["*"]) == before
    nested.write_bytes(encode(make_image(CLASS_COLOURS["red"], seed=2), "JPEG"))
    assert gen.tree_fingerprint(str(data), ["*"]) != before
    os.symlink("missing.jpg", data / "red" / "broken_link.jpg")  # accounted for, not fatal
    assert gen.tree_fingerprint(str(data), ["*"]) != before


def test_component_refuses_bad_settings(tmp_path):
    data = write_class_folder(tmp_path / "images", per_class=1)
    input_config = gen.make_input_config(str(data))
    with pytest.raises(ValueError, match="min_images_per_class"):
        gen.ImageFolderExampleGen(
            input_base=str(data), input_config=input_config,
            output_config=gen.make_output_config(input_config, IngestConfig()),
            ingest=IngestConfig(min_images_per_class=0),
        )


def _summary(examples):
    with open(os.path.join(examples.uri, gen.SUMMARY_FILE)) as f:
        return json.load(f)


def test_counts_reconcile_with_every_path_the_walk_finds(tmp_path):
    data = write_class_folder(tmp_path / "images", per_class=4)
    shutil.copy(data / "red" / "000.jpg", data / "red" / "again.jpg")
    (data / "green" / "page.jpg").write_bytes(b"<html>404</html>")
    (data / "blue" / "notes.txt").write_text("notes")
    (data / "empty_class").mkdir()
    os.symlink(data / "red" / "001.png", data / "blue" / "link.png")

    examples = _run_executor(data, tmp_path)

    walked = list(image_folder.find_files(str(data), "*"))
    summary = _summary(examples)
    by_status = summary["by_status"]
    assert summary["files_seen"] == len(walked) == 3 * 4 + 4
    assert summary["files_seen"] == (
        by_status["kept"] + by_status["converted"] + by_status["skipped"]
        + by_status["ignored"] + by_status["duplicate"])
    assert summary["reconciles"] is True
    assert by_status == {"kept": 12, "converted": 0, "skipped": 1, "ignored": 2, "duplicate": 1}
    # An empty class folder is a warning, not a class.
    assert "empty_class" not in summary["images_per_class"]
    assert summary["empty_class_folders"] == ["empty_class/"]
    assert summary["warnings"] == ["class folder empty_class/ holds no usable image: not a class"]


def test_manifest_split_is_where_each_image_landed(tmp_path):
    data = write_class_folder(tmp_path / "images", per_class=12)
    examples = _run_executor(data, tmp_path, test_percent=25)

    assert json.loads(examples.split_names) == ["train", "eval", "test"]
    landed = {
        _value(e, features.PATH_KEY).decode(): split
        for split in ("train", "eval", "test") for e in _read_split(examples, split)
    }
    rows = {row["path"]: row for row in gen.read_manifest(examples.uri)}
    assert len(landed) == 36 and all(rows[path]["split"] == split for path, split in landed.items())
    assert set(landed.values()) == {"train", "eval", "test"}
    assert examples.get_string_custom_property("payload_format") == "FORMAT_TF_EXAMPLE"
    per_split = _summary(examples)["images_per_split"]
    assert sum(sum(counts.values()) for counts in per_split.values()) == 36


def test_presplit_test_split_and_leakage_across_given_splits(tmp_path):
    data = tmp_path / "images"
    write_class_folder(data / "train", per_class=4)
    write_class_folder(data / "val", per_class=2, seed_offset=500)
    write_class_folder(data / "test", per_class=2, seed_offset=900)
    shutil.copy(data / "train" / "red" / "000.jpg", data / "val" / "red" / "leaked.jpg")
    shutil.copy(data / "train" / "blue" / "001.png", data / "test" / "blue" / "leaked.png")
    assert image_folder.detect_layout(str(data))[0] == image_folder.LAYOUT_PRESPLIT_TEST

    examples = _run_executor(data, tmp_path)

    assert json.loads(examples.split_names) == ["train", "eval", "test"]
    assert [len(_read_split(examples, s)) for s in ("train", "eval", "test")] == [12, 6, 6]
    rows = {row["path"]: row for row in gen.read_manifest(examples.uri)}
    leaked = rows["val/red/leaked.jpg"]
    assert leaked["status"] == "duplicate" and leaked["leakage"] is True
    assert leaked["same_as"] == "train/red/000.jpg" and leaked["split"] == "eval"
    assert "leakage" in leaked["reason"]
    summary = _summary(examples)
    assert [row["path"] for row in summary["leakage"]] == [
        "test/blue/leaked.png", "val/red/leaked.jpg"]
    assert any("2 images appear in more than one given split" in w for w in summary["warnings"])
    assert summary["images_per_split"]["test"] == {"blue": 2, "green": 2, "red": 2}


def test_span_layout_reads_the_resolved_span_and_records_it(tmp_path):
    data = tmp_path / "images"
    write_class_folder(data / "span-1", per_class=2)
    write_class_folder(data / "span-2", per_class=3, seed_offset=700)
    assert image_folder.detect_layout(str(data))[0] == "span-classes"

    examples = _run_executor(data, tmp_path, span=2)

    assert examples.span == 2
    paths = {_value(e, features.PATH_KEY).decode()
             for split in ("train", "eval") for e in _read_split(examples, split)}
    assert len(paths) == 9 and all(path.startswith("span-2/") for path in paths)
    assert _summary(examples)["span"] == 2


def test_driver_resolves_the_latest_span_or_the_one_asked(tmp_path):
    data = tmp_path / "images"
    for span in (1, 2, 3):
        write_class_folder(data / f"span-{span}", per_class=1, seed_offset=span)
    input_config = gen.make_input_config(str(data))
    exec_properties = {
        "input_base": str(data),
        "input_config": proto_utils.proto_to_json(input_config),
        "range_config": None,
    }

    def resolve(range_config):
        properties = dict(exec_properties)
        if range_config is not None:
            properties["range_config"] = proto_utils.proto_to_json(range_config)
        return gen.Driver(None).resolve_exec_properties(properties, None, None)

    latest = resolve(None)
    assert latest["span"] == 3 and '"span-3/*"' in latest["input_config"]
    second = resolve(gen.make_range_config(2))
    assert second["span"] == 2 and '"span-2/*"' in second["input_config"]
    assert second["input_fingerprint"] != latest["input_fingerprint"]
    assert gen.make_range_config(0) is None


def test_explicit_layouts_list_nothing():
    config = gen.make_input_config("gs://unreachable/images", "span-presplit-test")
    assert [split.pattern for split in config.splits] == [
        "span-{SPAN}/train/*", "span-{SPAN}/val/*", "span-{SPAN}/test/*"]
    with pytest.raises(ValueError, match="layout must be one of"):
        gen.make_input_config("gs://unreachable/images", "flat")
