"""Config files: YAML sections to typed configs and clear errors (the generic reader;
the commands' sections and flags on top are tests/test_settings.py's)."""

import pathlib

import pytest

from components.config import GateConfig, IngestConfig
from pipeline import cli
from tests.conftest import write_class_folder
from trainer.config import HeadConfig, TrainingConfig
from trainer.config_file import ConfigError, build_config, read_config_file

SECTIONS = {"training": TrainingConfig, "ingest": IngestConfig, "gate": GateConfig}
RECIPES = sorted((pathlib.Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_sections_are_read_and_checked(tmp_path):
    path = _write(tmp_path, (
        "training:\n"
        "  backbone: vgg16\n"
        "  learning_rate: 1e-4\n"
        "  head: {pooling: flatten, dense_units: [256]}\n"
        "gate:\n"
        "  min_accuracy: 0.8\n"
        "kubeflow:\n"
        "  image: registry.example.com/transferline:1\n"
    ))
    sections = read_config_file(path, SECTIONS, ignored_sections=("kubeflow",))
    assert set(sections) == {"training", "gate"}
    training = build_config(TrainingConfig, sections["training"])
    assert training.learning_rate == 1e-4
    assert training.head == HeadConfig(pooling="flatten", dense_units=(256,))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("training: [1, 2]\n", "section 'training' must be a mapping"),
        ("- a\n- b\n", "must map sections"),
        ("trainer:\n  epochs: 3\n", r"unknown sections \['trainer'\]"),
        ("training:\n  epoch: 3\n", "training.epoch: unknown setting"),
        ("training:\n  head:\n    dropuot: 0.5\n", "training.head.dropuot: unknown setting"),
        ("training:\n  epochs: three\n", "training.epochs: expected a whole number, got 'three'"),
        ("training:\n  head: {dense_units: [a]}\n", r"training.head.dense_units\[0\]: expected"),
        ("training:\n  epochs: [3\n", "is not valid YAML"),
        ("gate:\n  min_accuracy: high\n", "gate.min_accuracy: expected a number"),
        ("training:\n  export:\n    max_image_pixels: lots\n",
         "training.export.max_image_pixels: expected a whole number, got 'lots'"),
        ("training:\n  export: {tflite: sometimes}\n",
         "training.export.tflite: expected true or false, got 'sometimes'"),
        ("training:\n  export: {tflite_tolerence: 0.01}\n",
         r"training.export.tflite_tolerence: unknown setting; export settings are \["),
        ("training:\n  export: true\n", "training.export: expected a mapping of settings"),
    ],
)
def test_bad_files_name_the_file_and_the_setting(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as raised:
        read_config_file(path, SECTIONS)
    assert path in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("config.yaml", "gate:\n  min_accuracy: 0.5\n  keep_versions: 2\n  min_accuracy: 0.9\n",
         "duplicate key 'min_accuracy' on line 4, column 3 (first on line 2)"),
        ("config.yaml", "gate: {min_accuracy: 0.5, min_accuracy: 0.9}\n",
         "duplicate key 'min_accuracy' on line 1, column 27 (first on line 1)"),
        ("config.yaml", "gate:\n  min_accuracy: 0.5\ningest: {}\ngate:\n  keep_versions: 2\n",
         "duplicate key 'gate' on line 4, column 1 (first on line 1)"),
        ("config.json", '{"training": {"epochs": 2,\n              "epochs": 3}}\n',
         "duplicate key 'epochs' on line 2, column 15 (first on line 1)"),
    ],
)
def test_a_key_given_twice_is_refused_naming_the_file_key_and_lines(tmp_path, name, text,
                                                                    message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        read_config_file(str(path), SECTIONS)
    assert str(raised.value) == f"config file {str(path)!r}: {message}"


def test_a_merged_key_may_be_overridden(tmp_path):
    path = _write(tmp_path, "gate:\n  <<: {min_accuracy: 0.5, keep_versions: 2}\n"
                            "  min_accuracy: 0.9\n")
    assert read_config_file(path, SECTIONS) == {
        "gate": {"min_accuracy": 0.9, "keep_versions": 2}}


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"training:\n  # caf\xe9 au lait\n  epochs: 2\n", "byte 0xe9 at offset 17 (line 2)"),
        ("training:\n  epochs: 2\n".encode("utf-16"), "byte 0xff at offset 0 (line 1)"),
        (b"\xef\xbb\xbftraining:\n  epochs: 2\xff\n", "byte 0xff at offset 24 (line 2)"),
    ],
)
def test_a_file_that_is_not_utf8_is_named_with_the_offset(tmp_path, data, where):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as raised:
        read_config_file(str(path), SECTIONS)
    assert str(raised.value) == (
        f"config file {str(path)!r} is not UTF-8 text: {where} cannot be decoded")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbftraining:\n  epochs: 2\n")
    assert read_config_file(str(path), SECTIONS) == {"training": {"epochs": 2}}


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*nope.yaml"):
        read_config_file(str(tmp_path / "nope.yaml"), SECTIONS)


def test_an_empty_file_is_no_settings(tmp_path):
    assert read_config_file(_write(tmp_path, ""), SECTIONS) == {}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_every_recipe_is_a_valid_config(recipe):
    sections = read_config_file(str(recipe), SECTIONS)
    build_config(TrainingConfig, sections["training"]).validate()


def test_recipes_say_what_the_seeds_did():
    def load(stem):
        (path,) = [recipe for recipe in RECIPES if recipe.stem.startswith(stem)]
        return build_config(TrainingConfig, read_config_file(str(path), SECTIONS)["training"])

    s0, s1, s2, s3, s4 = (load(f"s{n}_") for n in range(5))
    assert (s0.backbone, s0.cut_layer, s0.early_stopping_patience) == ("vgg16", "fc2", 5)
    assert s1.augmentation.rotation == 0.2 and s1.augmentation.horizontal_flip
    assert (s1.fine_tuning.unfreeze_layers, s1.fine_tuning.learning_rate) == (10, 1e-4)
    assert s2.head.pooling == "flatten" and s2.augmentation.enabled
    assert (s3.cut_layer, s3.head.dense_units, s3.head.binary) == ("mixed7", (1024,), True)
    assert (s3.optimizer, s3.learning_rate) == ("rmsprop", 1e-4)
    assert s4.backbone == "vgg16" and not s4.augmentation.enabled


# --------------------------------------------------------------------------- the CLI


def test_cli_bad_config_file_is_one_line_and_exit_2(tmp_path, capsys):
    data = write_class_folder(tmp_path / "images", 1)
    path = _write(tmp_path, "training:\n  head:\n    pooling: mean\n")
    code = cli.main(["run", "--config", path, "--data", str(data),
                     "--workdir", str(tmp_path / "work")])
    assert code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: head.pooling must be one of") and len(err.splitlines()) == 1
    assert not (tmp_path / "work").exists()


def test_cli_unknown_setting_names_the_file(tmp_path, capsys):
    data = write_class_folder(tmp_path / "images", 1)
    path = _write(tmp_path, "training:\n  learning_rte: 0.1\n")
    code = cli.main(["run", "--config", path, "--data", str(data),
                     "--workdir", str(tmp_path / "work")])
    assert code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert path in err and "training.learning_rte: unknown setting" in err


def test_cli_ignores_a_kubeflow_section_and_checks_the_rest(tmp_path, capsys):
    data = write_class_folder(tmp_path / "images", 1)
    path = _write(tmp_path, "kubeflow:\n  image: x\ngate:\n  min_accuracy: 2\n")
    code = cli.main(["run", "--config", path, "--data", str(data),
                     "--workdir", str(tmp_path / "work")])
    assert code == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err == "error: min_accuracy must be in [0, 1], got 2.0\n"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"training:\n  epochs: 1\n  epochs: 5\n",
         "duplicate key 'epochs' on line 3, column 3 (first on line 2)"),
        (b"training:\n  # caf\xe9\n  epochs: 1\n",
         "is not UTF-8 text: byte 0xe9 at offset 17 (line 2) cannot be decoded"),
    ],
)
def test_cli_duplicate_key_or_bad_encoding_is_one_line_and_exit_2(tmp_path, capsys, data,
                                                                   message):
    data_root = write_class_folder(tmp_path / "images", 1)
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    code = cli.main(["run", "--config", str(path), "--data", str(data_root),
                     "--workdir", str(tmp_path / "work")])
    assert code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: config file {str(path)!r}") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "work").exists()
