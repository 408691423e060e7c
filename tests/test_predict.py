"""`transferline predict`: model resolution, folders, top-k, JSON, per-file errors."""

import contextlib
import json
import os
import shutil
import threading

import pytest

from pipeline import cli, predict
from tests import serving_testing
from tests.serving_testing import colour_image
from trainer.progress_events import Progress


@pytest.fixture(scope="module")
def serving_dir(tmp_path_factory):
    """`<serving>/colours/<version>/`, as the Pusher lays it out, with two versions."""
    model = serving_testing.shared_tiny_model()
    serving = tmp_path_factory.mktemp("predict") / "serving"
    for version in ("7", "12"):
        shutil.copytree(model, serving / "colours" / version)
    return serving


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    (folder / "red.png").write_bytes(colour_image("red", seed=1))
    (folder / "nested" / "blue.jpg").write_bytes(colour_image("blue", seed=2, image_format="JPEG"))
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return folder


def test_model_is_resolved_from_serving_model_or_version_dir(serving_dir):
    newest = str(serving_dir / "colours" / "12")
    assert predict.resolve_model_dir(str(serving_dir)) == newest
    assert predict.resolve_model_dir(str(serving_dir / "colours")) == newest
    assert predict.resolve_model_dir(str(serving_dir / "colours" / "7")).endswith("7")


def test_a_serving_dir_with_several_models_asks_which(serving_dir, tmp_path):
    several = tmp_path / "serving"
    shutil.copytree(serving_dir / "colours", several / "a")
    shutil.copytree(serving_dir / "colours", several / "b")
    with pytest.raises(FileNotFoundError, match="serves 2 models; give one of: .*a, .*b"):
        predict.resolve_model_dir(str(several))
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        predict.resolve_model_dir(str(tmp_path / "nowhere"))


def test_folder_is_classified_with_a_per_file_error_for_bad_files(serving_dir, images):
    results = predict.predict_files(str(serving_dir), [str(images), "missing.png"], top_k=2,
                                    batch_size=2)

    by_name = {os.path.basename(r.path): r for r in results}
    assert list(by_name) == ["empty.jpg", "notes.txt", "red.png", "blue.jpg", "missing.png"]
    assert by_name["empty.jpg"].error == "empty input (0 bytes)"
    assert by_name["notes.txt"].error.startswith("not an image")
    assert by_name["missing.png"].error == "no such file or folder"
    for name in ("red.png", "blue.jpg"):
        result = by_name[name]
        assert result.error is None and result.label in ("red", "green", "blue")
        assert len(result.top_k) == 2 and result.top_k[0] == (result.label, result.score)
        assert result.top_k[0][1] >= result.top_k[1][1]


def test_command_prints_json_and_exits_1_when_a_file_failed(serving_dir, images, capsys):
    status = cli.main([
        "predict", "--model", str(serving_dir / "colours" / "7"), str(images / "red.png"),
        str(images / "notes.txt"), "--top-k", "3", "--json",
    ])

    results = json.loads(capsys.readouterr().out)
    assert status == 1
    assert [len(r["top_k"]) for r in results] == [3, 0]
    assert sorted(c["label"] for c in results[0]["top_k"]) == ["blue", "green", "red"]
    assert results[1]["label"] is None and "not an image" in results[1]["error"]


def test_command_text_output_and_bad_model_path(serving_dir, images, capsys, tmp_path):
    assert cli.main(["predict", "--model", str(serving_dir), str(images / "red.png")]) == 0
    path, label, score = capsys.readouterr().out.strip().split("\t")
    assert path.endswith("red.png") and label in ("red", "green", "blue") and 0 <= float(score) <= 1

    assert cli.main(["predict", "--model", str(tmp_path), str(images / "red.png")]) == 2
    assert "no SavedModel" in capsys.readouterr().err


def test_a_truncated_jpeg_in_a_batch_gets_its_own_clear_error(serving_dir, tmp_path):
    whole = colour_image("blue", seed=2, image_format="JPEG", size=64)
    (tmp_path / "a.jpg").write_bytes(whole)
    (tmp_path / "b.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "c.png").write_bytes(colour_image("red", seed=1))

    results = predict.predict_files(str(serving_dir), [str(tmp_path)], batch_size=3)

    assert [r.error for r in results] == [
        None, "truncated JPEG: the data ends before its end-of-image marker", None
    ]
    assert results[0].label in ("red", "green", "blue")


@pytest.mark.parametrize("damage", [b"not a protocol buffer", b""], ids=["garbage", "empty"])
def test_a_corrupt_saved_model_is_refused_as_unreadable(serving_dir, images, tmp_path, capsys,
                                                        damage):
    model = tmp_path / "model"
    shutil.copytree(serving_dir / "colours" / "7", model)
    (model / "saved_model.pb").write_bytes(damage)

    assert cli.main(["predict", "--model", str(model), str(images / "red.png")]) == 2
    assert capsys.readouterr().err == (
        f"error: {model / 'saved_model.pb'}: not a readable SavedModel "
        "(the file is damaged, empty or not a SavedModel)\n"
    )
    with pytest.raises(predict.UnreadableModel, match="not a readable SavedModel"):
        predict.Predictor(str(model))


@contextlib.contextmanager
def _fifo_opens_released(path: str):
    """Lists each time FIFO `path` is opened for reading, and lets that reader see EOF.

    So code that opens the FIFO fails the test instead of blocking it.
    """
    stop, opened = threading.Event(), []

    def release() -> None:
        while not stop.wait(0.05):
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # No reader has it open.
                continue
            opened.append(path)
            os.close(descriptor)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join()


def test_a_fifo_is_skipped_as_not_a_regular_file_never_opened(serving_dir, images):
    os.mkfifo(images / "pipe.png")

    with _fifo_opens_released(str(images / "pipe.png")) as opened:
        results = predict.predict_files(str(serving_dir), [str(images / "pipe.png"), str(images)])

    assert opened == []

    by_path = {r.path: r.error for r in results}
    assert by_path[str(images / "pipe.png")] == "not a regular file"  # ingestion's reason
    assert [r.path for r in results].count(str(images / "pipe.png")) == 2
    assert by_path[str(images / "red.png")] is None


def test_text_output_escapes_tabs_newlines_and_backslashes(serving_dir, tmp_path, capsys):
    names = ["a\nb.png", "c\td.png", "e\\f.png"]
    for name in names:
        (tmp_path / name).write_bytes(colour_image("red", seed=1))

    assert cli.main(["predict", "--model", str(serving_dir), str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        f"{tmp_path}/a\\nb.png", f"{tmp_path}/c\\td.png", f"{tmp_path}/e\\\\f.png"
    ]
    assert all(len(line.split("\t")) == 3 for line in lines)

    assert cli.main(["predict", "--model", str(serving_dir), str(tmp_path), "--json"]) == 0
    paths = [r["path"] for r in json.loads(capsys.readouterr().out)]
    assert paths == [str(tmp_path / name) for name in names]


def test_progress_counts_every_image_found_piped_and_nothing_with_quiet(serving_dir, images,
                                                                        capsys):
    events = []
    predict.predict_files(str(serving_dir), [str(images)], batch_size=2, on_progress=events.append)
    # red.png, nested/blue.jpg, notes.txt and empty.jpg; .DS_Store is hidden.
    assert events[0] == Progress("classified", 0, 4, "images")
    assert events[-1] == Progress("classified", 4, 4, "images")
    assert [event.done for event in events] == sorted(event.done for event in events)

    cli.main(["predict", "--model", str(serving_dir), str(images)])
    err = capsys.readouterr().err
    assert "] predict: classified 4 of 4 images (100%)" in err
    assert "] predict finished in " in err
    cli.main(["predict", "--quiet", "--model", str(serving_dir), str(images)])
    assert capsys.readouterr().err == ""
