"""The `transferline` command's handling of bad input: one line, non-zero exit."""

import pickle
import zipfile

import pytest

from pipeline import cli
from tests.conftest import write_class_folder


def _run(tmp_path, data, *flags):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    return cli.main(["run", "--data", str(data), "--workdir", str(tmp_path / "work"), *flags])


def _hostile_pth(root):
    """Class folders, and beside them a torch-style zip whose pickle calls posix.system."""
    write_class_folder(root, 1)
    marker = root.parent / "pwned"
    data_pkl = (b"\x80\x02" + pickle.GLOBAL + b"posix\nsystem\n"
                + pickle.dumps(f"touch {marker}", protocol=2)[2:-1]
                + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    with zipfile.ZipFile(root.parent / "evil.pth", "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)


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
        (lambda root: write_class_folder(root, 1), ("--image-size", "100000"),
         "image_size must be at most 1024 pixels"),
        (lambda root: write_class_folder(root, 1),
         ("--max-image-pixels", "20000000000000000000"),
         "export.max_image_pixels must be at most 536870911"),
        (lambda root: write_class_folder(root, 1), ("--weights", "{tmp}"),
         "error: weights='{tmp}' is a directory; expected a weights file (.h5, .pth)"),
        (_hostile_pth, ("--weights", "{tmp}/evil.pth"),
         "error: weights: {tmp}/evil.pth: forbidden global posix.system in checkpoint"),
        (lambda root: write_class_folder(root, 1), ("--model-name", "../../escaped"),
         "--model-name must be one directory name of letters, digits, '.', '_' or '-', "
         "starting with a letter or digit (the TF Serving model name), got '../../escaped'"),
        (lambda root: write_class_folder(root, 1), ("--model-name", ""),
         "--model-name must be one directory name"),
        (lambda root: write_class_folder(root, 1), ("--model-name", ".."),
         "--model-name must be one directory name"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, setup, flags, message):
    data = tmp_path / "images"
    setup(data)
    assert _run(tmp_path, data, *flags) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message.format(tmp=tmp_path) in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "work").exists()  # so no metadata.sqlite and no pipeline/
    assert not (tmp_path / "pwned").exists()


def test_predict_without_a_model_is_one_line(tmp_path, capsys):
    assert cli.main(["predict", "--model", str(tmp_path), "x.png"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no SavedModel") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("workdir", "message"),
    [
        ("images", "error: --workdir '{tmp}/images' is inside --data '{tmp}/images': the run's "
                   "output would be read as images; give a workdir outside it"),
        ("images/work", "error: --workdir '{tmp}/images/work' is inside --data"),
        ("images/red/000.jpg", "error: --workdir '{tmp}/images/red/000.jpg' is a file; "
                               "give a directory (made if missing)"),
    ],
)
def test_a_workdir_in_the_image_folder_or_a_file_is_refused(tmp_path, capsys, workdir, message):
    data = write_class_folder(tmp_path / "images", 1)
    before = sorted(path.name for path in data.rglob("*"))
    code = cli.main(["run", "--data", str(data), "--workdir", str(tmp_path / workdir)])
    assert code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(message.format(tmp=tmp_path)) and err.count("\n") == 1
    assert sorted(path.name for path in data.rglob("*")) == before
