"""The `transferline` command's handling of bad input: one line, non-zero exit."""

import pytest

from pipeline import cli
from tests.conftest import write_class_folder


def _run(tmp_path, data, *flags):
    return cli.main(["run", "--data", str(data), "--workdir", str(tmp_path / "work"), *flags])


@pytest.mark.parametrize(
    ("setup", "flags", "message"),
    [
        (lambda root: None, (), "does not exist"),
        (lambda root: root.mkdir(), (), "no images found"),
        (lambda root: (root / "only").mkdir(parents=True)
         or (root / "only" / "a.png").write_bytes(b"x"), (), "at least two class folders"),
        (lambda root: write_class_folder(root, 1), ("--backbone", "alexnet"), "unknown backbone"),
        (lambda root: write_class_folder(root, 1), ("--epochs", "0"), "epochs must be"),
        (lambda root: write_class_folder(root, 1), ("--weights", "/nope.h5"), "weights='/nope.h5'"),
        (lambda root: write_class_folder(root, 1), ("--eval-percent", "100"), "eval_percent"),
        (lambda root: write_class_folder(root, 1), ("--max-image-pixels", "0"),
         "export.max_image_pixels must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, setup, flags, message):
    data = tmp_path / "images"
    setup(data)
    assert _run(tmp_path, data, *flags) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "work").exists()


def test_predict_without_a_model_is_one_line(tmp_path, capsys):
    assert cli.main(["predict", "--model", str(tmp_path), "x.png"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no SavedModel") and len(err.splitlines()) == 1
