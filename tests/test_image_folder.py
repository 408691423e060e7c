"""components/image_folder.py: layouts, spans, the hash split and the manifest summary."""

import shutil

import pytest
from tfx.components.example_gen import base_example_gen_executor
from tfx.proto import example_gen_pb2

from components import image_folder
from components.config import IngestConfig
from components.image_folder import IngestionError
from tests.conftest import write_class_folder
from trainer import features


def _touch(root, *relatives):
    for relative in relatives:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.mark.parametrize(
    ("files", "layout", "eval_folder"),
    [
        (["cat/a.jpg", "dog/b.jpg"], "classes", "val"),
        (["train/cat/a.jpg", "val/cat/b.jpg"], "presplit", "val"),
        (["train/cat/a.jpg", "eval/cat/b.jpg"], "presplit", "eval"),
        (["train/cat/a.jpg", "val/cat/b.jpg", "test/cat/c.jpg"], "presplit-test", "val"),
        (["train/cat/a.jpg"], "classes", "val"),  # train/ alone is a class called train
        (["span-1/cat/a.jpg", "span-2/train/c/a.jpg", "span-2/val/c/a.jpg"],
         "span-presplit", "val"),
        (["span-3/cat/a.jpg", "span-10/cat/a.jpg"], "span-classes", "val"),
    ],
)
def test_detect_layout(tmp_path, files, layout, eval_folder):
    _touch(tmp_path, *files)
    assert image_folder.detect_layout(str(tmp_path)) == (layout, eval_folder)


def test_spans_sort_numerically_and_refuse_zero_padding(tmp_path):
    _touch(tmp_path, "span-10/a/x.jpg", "span-9/a/x.jpg", "notes/x.jpg")
    assert image_folder.list_spans(str(tmp_path)) == [9, 10]
    _touch(tmp_path, "span-01/a/x.jpg")
    with pytest.raises(IngestionError, match="'span-01'.*zero-padded; name it span-1"):
        image_folder.list_spans(str(tmp_path))


def test_split_specs_for_every_layout():
    patterns = {
        layout: [(s.name, s.pattern) for s in image_folder.split_specs(layout)]
        for layout in image_folder.LAYOUTS
    }
    assert patterns["classes"] == [("all", "*")]
    assert patterns["presplit"] == [("train", "train/*"), ("eval", "val/*")]
    assert patterns["presplit-test"][-1] == ("test", "test/*")
    assert patterns["span-classes"] == [("all", "span-{SPAN}/*")]
    assert patterns["span-presplit-test"] == [
        ("train", "span-{SPAN}/train/*"), ("eval", "span-{SPAN}/val/*"),
        ("test", "span-{SPAN}/test/*"),
    ]
    with pytest.raises(ValueError, match="layout must be one of classes, presplit"):
        image_folder.split_specs("flat")


def test_resolve_split_roots_reads_the_latest_span_or_the_one_asked(tmp_path):
    _touch(tmp_path, "span-1/train/a/x.jpg", "span-1/val/a/x.jpg", "span-2/train/a/x.jpg",
           "span-2/val/a/x.jpg")
    layout, span, roots = image_folder.resolve_split_roots(str(tmp_path))
    assert (layout, span) == ("span-presplit", 2)
    assert [(split.name, split.pattern) for split, _ in roots] == [
        ("train", "span-2/train/*"), ("eval", "span-2/val/*")]
    assert roots[0][1] == str(tmp_path / "span-2" / "train")
    assert image_folder.resolve_split_roots(str(tmp_path), span=1)[1] == 1
    with pytest.raises(IngestionError, match=r"span 7 not found under .* \(spans: 1, 2\)"):
        image_folder.resolve_split_roots(str(tmp_path), span=7)
    with pytest.raises(IngestionError, match="has no span-<N> folders"):
        image_folder.resolve_split_roots(str(tmp_path / "span-1"), span=1)
    with pytest.raises(IngestionError, match="does not exist"):
        image_folder.resolve_split_roots(str(tmp_path / "nope"))


def test_find_files_prefixes_paths_and_records_the_split(tmp_path):
    write_class_folder(tmp_path / "span-4" / "train", per_class=1)
    found = list(image_folder.find_files(str(tmp_path), "span-4/train/*", "train"))
    assert {f.relative_path for f in found} == {
        "span-4/train/red/000.jpg", "span-4/train/green/000.jpg", "span-4/train/blue/000.jpg"}
    assert {(f.label, f.split) for f in found} == {("red", "train"), ("green", "train"),
                                                    ("blue", "train")}


def test_class_folders_skip_hidden_and_system_folders(tmp_path):
    _touch(tmp_path, "cat/a.jpg", ".cache/a.jpg", "__MACOSX/a.jpg", "loose.jpg")
    (tmp_path / "empty").mkdir()
    assert image_folder.class_folders(str(tmp_path), "*") == ["cat/", "empty/"]


@pytest.mark.parametrize("percents", [(80, 20), (70, 20, 10), (1, 99)])
def test_hash_split_is_tfx_partition(percents):
    names = ["train", "eval", "test"][: len(percents)]
    split_config = example_gen_pb2.SplitConfig(
        splits=[example_gen_pb2.SplitConfig.Split(name=n, hash_buckets=b)
                for n, b in zip(names, percents, strict=True)],
        partition_feature_name=features.HASH_KEY,
    )
    buckets = [sum(percents[: i + 1]) for i in range(len(percents))]
    import tensorflow as tf

    for n in range(300):
        content_hash = f"{n:064x}"
        example = tf.train.Example()
        example.features.feature[features.HASH_KEY].bytes_list.value.append(content_hash.encode())
        expected = base_example_gen_executor._PartitionFn(  # noqa: SLF001
            example, len(buckets), buckets, split_config)
        split = image_folder.hash_split(content_hash, list(zip(names, percents, strict=True)))
        assert split == names[expected]


def _row(path, label, status, split=None, **extra):
    return {"path": path, "label": label, "status": status, "split": split,
            "reason": "" if status == "kept" else f"{status}: why", "content_hash": "h", **extra}


def test_summary_reconciles_and_warns_about_empty_class_folders_and_leakage():
    rows = [
        _row("train/cat/a.jpg", "cat", "kept", "train"),
        _row("train/cat/b.jpg", "cat", "converted", "train"),
        _row("val/cat/a.jpg", "cat", "duplicate", "eval", same_as="train/cat/a.jpg", leakage=True),
        _row("train/dog/x.jpg", "dog", "skipped", "train"),
        _row("train/dog/.DS_Store", "dog", "ignored", "train"),
        _row("val/dog/y.jpg", "dog", "kept", "eval"),
    ]
    folders = ["train/cat/", "train/dog/", "train/empty/", "val/cat/", "val/dog/"]

    summary = image_folder.summarize_manifest(rows, folders)

    assert summary["files_seen"] == 6 and summary["reconciles"]
    assert summary["by_status"] == {"kept": 2, "converted": 1, "skipped": 1, "ignored": 1,
                                    "duplicate": 1}
    assert summary["images_per_class"] == {"cat": 2, "dog": 1}
    assert summary["images_per_split"] == {"eval": {"dog": 1}, "train": {"cat": 2}}
    # train/dog/ holds only a broken file, val/cat/ only a duplicate: not classes there.
    assert summary["empty_class_folders"] == ["train/dog/", "train/empty/", "val/cat/"]
    assert "class folder train/empty/ holds no usable image: not a class" in summary["warnings"]
    assert summary["leakage"] == [{"path": "val/cat/a.jpg", "same_as": "train/cat/a.jpg"}]
    assert any("leakage" in warning for warning in summary["warnings"])
    assert [row["path"] for row in summary["not_used"]] == ["train/dog/x.jpg", "val/cat/a.jpg"]


def test_check_classes():
    image_folder.check_classes({"a": 2, "b": 2}, 2)
    with pytest.raises(IngestionError, match=r"at least two classes with images, found 1 \(a\)"):
        image_folder.check_classes({"a": 5}, 2)
    with pytest.raises(IngestionError, match=r"min_images_per_class=3: b \(1\)"):
        image_folder.check_classes({"a": 5, "b": 1}, 3)


def _one_class(root):
    write_class_folder(root, 1)
    shutil.rmtree(root / "red")
    shutil.rmtree(root / "green")
    (root / "green").mkdir()  # an empty class folder is not a class


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "no images found"),
        (_one_class, "at least two class folders.*found 1: blue"),
    ],
)
def test_precheck_names_the_problem(tmp_path, make, message):
    root = tmp_path / "images"
    make(root)
    with pytest.raises(IngestionError, match=message):
        image_folder.precheck_data_root(str(root))


def test_count_classes_lists_the_training_split_of_the_span(tmp_path):
    write_class_folder(tmp_path / "span-1" / "train", per_class=1)
    write_class_folder(tmp_path / "span-1" / "val", per_class=1)
    _touch(tmp_path, "span-2/train/cat/a.jpg", "span-2/train/dog/a.jpg", "span-2/val/cat/b.jpg")
    assert image_folder.count_classes(str(tmp_path), span=1) == 3
    assert image_folder.count_classes(str(tmp_path)) == 2


def test_hash_buckets_share_100_buckets_and_leave_out_an_empty_test_split():
    assert image_folder.hash_buckets(IngestConfig()) == [("train", 80), ("eval", 20)]
    assert image_folder.hash_buckets(IngestConfig(eval_percent=25, test_percent=10)) == [
        ("train", 65), ("eval", 25), ("test", 10)]
