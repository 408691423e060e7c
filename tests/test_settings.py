"""Settings flags declared once: `run` and `compile` take the same ones, one config-file
reader for every section, one merge of file and flags."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from components.config import GateConfig, IngestConfig
from pipeline import cli, settings
from pipeline.kubeflow_settings import KubeflowConfig
from pipeline.names import check_model_name
from trainer.config import ExportConfig, TrainingConfig
from trainer.config_file import build_config

# The literal flag sets: a flag dropped from (or added to) a command shows up here.
LOCAL_SETTINGS_FLAGS = {
    "--config",
    "--backbone", "--weights", "--epochs", "--image-size", "--batch-size", "--learning-rate",
    "--feature-engine", "--max-image-pixels", "--tflite", "--tune", "--tune-trials",
    "--tune-seconds", "--no-warm-start",
    "--eval-percent", "--test-percent", "--min-images-per-class", "--span", "--span-window",
    "--min-examples", "--max-label-drift",
    "--min-accuracy", "--max-accuracy-drop", "--min-class-recall", "--accuracy-top-k",
    "--keep-versions",
}
CLUSTER_FLAGS = {
    "--image", "--pipeline-root", "--data", "--serving-dir", "--model-name", "--pipeline-name",
    "--layout", "--gpus", "--gpu-type", "--trainer-cpu", "--trainer-memory-gb", "--node-cpu",
    "--node-memory-gb", "--beam-arg", "--pvc", "--no-cache", "--no-baseline",
}
HELP = {"-h", "--help"}
IMAGE = "registry.example.com/transferline:7"


def _subcommand(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return subparsers.choices[name]


def _options(name: str) -> set[str]:
    return {option for action in _subcommand(name)._actions for option in action.option_strings}


def _dests(name: str) -> dict[str, str]:
    return {option: action.dest for action in _subcommand(name)._actions
            for option in action.option_strings}


def _write(tmp_path, text: str, name: str = "settings.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------- the flags


def test_run_and_compile_take_the_same_settings_flags():
    assert _options("run") == HELP | LOCAL_SETTINGS_FLAGS | {
        "--data", "--workdir", "--model-name", "--beam-arg", "--verbose", "--quiet"}
    assert _options("compile") == HELP | LOCAL_SETTINGS_FLAGS | CLUSTER_FLAGS | {"--output"}
    for name in ("submit", "schedule"):
        assert LOCAL_SETTINGS_FLAGS | CLUSTER_FLAGS <= _options(name), name


def test_flag_destinations_are_kept():
    run, compile_ = _dests("run"), _dests("compile")
    assert {flag: run[flag] for flag in ("--data", "--model-name", "--beam-arg",
                                         "--no-warm-start", "--tflite", "--max-image-pixels",
                                         "--feature-engine")} == {
        "--data": "data", "--model-name": "model_name", "--beam-arg": "beam_arg",
        "--no-warm-start": "warm_start", "--tflite": "tflite",
        "--max-image-pixels": "max_image_pixels", "--feature-engine": "feature_engine"}
    assert {flag: compile_[flag] for flag in ("--data", "--gpus", "--gpu-type", "--beam-arg",
                                              "--pvc", "--no-cache", "--no-baseline",
                                              "--no-warm-start")} == {
        "--data": "data_root", "--gpus": "trainer_gpus", "--gpu-type": "trainer_gpu_type",
        "--beam-arg": "beam_pipeline_args", "--pvc": "pvc_mounts",
        "--no-cache": "enable_cache", "--no-baseline": "baseline",
        "--no-warm-start": "warm_start"}


def test_every_row_names_a_setting_of_its_section():
    flags = [row.flag for row in settings.FLAGS]
    dests = [row.dest for row in settings.FLAGS]
    assert len(set(flags)) == len(flags) and len(set(dests)) == len(dests)
    assert {row.section for row in settings.FLAGS} == set(settings.SECTIONS)
    for row in settings.FLAGS:
        settings.default_value(row.section, row.setting)  # AttributeError if not a setting


def test_settings_flags_default_to_none():
    args = _subcommand("compile").parse_args(["--output", "p.json"])
    assert all(getattr(args, row.dest) is None for row in settings.FLAGS)
    assert args.config is None


def test_help_shows_the_settings_classes_defaults():
    text = _subcommand("compile").format_help()
    # Literal numbers: a default changed in its class must show here, not be restated.
    for expected in ("pushed versions kept under the serving dir (default 5)",
                     "(default 20)", "Trainer GPUs (default 0)", "(default 0.25)",
                     "TF Serving model name (default: transferline)",
                     "--direct_running_mode=multi_processing --direct_num_workers=0"):
        assert expected in " ".join(text.split()), expected
    assert "{default}" not in text
    assert "40000000" not in text  # a training default: TrainingConfig imports TensorFlow


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["compile", "--help"],
                                  ["submit", "--help"]])
def test_help_does_not_import_tensorflow(argv):
    code = "\n".join([
        "import sys",
        "from pipeline import cli",
        "try:",
        f"    cli.main({argv!r})",
        "except SystemExit:",
        "    pass",
        "print('tensorflow' in sys.modules, 'tfx' in sys.modules, 'kfp' in sys.modules,",
        "      file=sys.stderr)",
    ])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stderr.strip().splitlines()[-1] == "False False False"
    assert "usage: transferline" in result.stdout


# ------------------------------------------------------- one reader, one merge


def test_config_file_sections_become_settings(tmp_path):
    path = _write(tmp_path, (
        "kubeflow:\n  image: reg/img:1\n  trainer_gpus: 1\n  trainer_memory_gb: 24\n"
        "  beam_pipeline_args: [--runner=FlinkRunner]\n"
        "training:\n  epochs: 3\n  learning_rate: 1e-4\n"
        "gate:\n  min_accuracy: 0.8\n"
    ))
    sections = settings.read_config_file(path)
    assert set(sections) == {"kubeflow", "training", "gate"}
    assert sections["gate"] == {"min_accuracy": 0.8}
    config = build_config(KubeflowConfig, sections["kubeflow"])
    assert config.beam_pipeline_args == ("--runner=FlinkRunner",)
    assert config.trainer_memory_gb == 24.0 and isinstance(config.trainer_memory_gb, float)
    training = build_config(TrainingConfig, sections["training"])
    assert (training.epochs, training.learning_rate) == (3, 1e-4)  # YAML's '1e-4' string too


def test_run_reads_the_local_sections_and_ignores_kubeflow(tmp_path):
    path = _write(tmp_path, "kubeflow:\n  trainer_cpu: not checked by run\n"
                            "training:\n  epochs: 3\n")
    assert settings.read_config_file(path, settings.LOCAL_SECTIONS) == {
        "training": {"epochs": 3}}
    with pytest.raises(ValueError, match="kubeflow.trainer_cpu: expected a number"):
        settings.read_config_file(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cluster:\n  image: x\n", "unknown sections"),
        ("kubeflow:\n  gpus: 1\n", "kubeflow.gpus: unknown setting; kubeflow settings are"),
        ("kubeflow:\n  trainer_cpu: many\n", "kubeflow.trainer_cpu: expected a number"),
        ("kubeflow:\n  baseline: no-way\n", "kubeflow.baseline: expected true or false"),
        ("training:\n  epochs: ten\n", "training.epochs: expected a whole number"),
        ("ingest:\n  eval_percnt: 10\n", "ingest.eval_percnt: unknown setting"),
        ("gate:\n  keep_versions: many\n", "gate.keep_versions: expected a whole number"),
        ("- a\n- b\n", "must map sections"),
    ],
)
def test_config_file_errors_name_the_file_and_the_setting(tmp_path, text, message):
    path = _write(tmp_path, text, "cluster.yaml")
    with pytest.raises(ValueError, match=message) as raised:
        settings.read_config_file(path)
    assert path in str(raised.value) and "\n" not in str(raised.value)


def test_flags_override_the_file_and_defaults_fill_the_rest(tmp_path):
    path = _write(tmp_path, (
        "training:\n  backbone: vgg16\n  epochs: 7\n  batch_size: 4\n"
        "  export: {max_image_pixels: 500, tflite_tolerance: 0.01}\n"
        "ingest:\n  eval_percent: 30\n  min_examples: 3\n"
        "gate:\n  min_accuracy: 0.7\n"
        "kubeflow:\n  image: ignored/by-run:1\n"
    ))
    args = _subcommand("run").parse_args([
        "--data", "d", "--workdir", "w", "--config", path, "--epochs", "2", "--tflite",
        "--eval-percent", "25", "--keep-versions", "2", "--no-warm-start"])
    configs = settings.settings_from_args(args, settings.LOCAL_SECTIONS)

    assert set(configs) == {"training", "ingest", "gate"}
    training = configs["training"]
    assert (training.backbone, training.epochs, training.batch_size) == ("vgg16", 2, 4)
    assert training.warm_start is False
    assert training.export == ExportConfig(max_image_pixels=500, tflite=True,
                                           tflite_tolerance=0.01)
    assert configs["ingest"] == IngestConfig(eval_percent=25, min_examples=3)
    assert configs["gate"] == GateConfig(min_accuracy=0.7, keep_versions=2)


def test_a_nested_flag_without_a_file_keeps_the_other_nested_defaults():
    args = _subcommand("run").parse_args(["--data", "d", "--workdir", "w",
                                          "--max-image-pixels", "9"])
    training = settings.settings_from_args(args, settings.LOCAL_SECTIONS)["training"]
    assert training.export == ExportConfig(max_image_pixels=9)
    assert training == TrainingConfig(export=ExportConfig(max_image_pixels=9))


def test_merging_does_not_change_the_file_values(tmp_path):
    file_values = {"training": {"export": {"max_image_pixels": 500}}}
    args = argparse.Namespace(max_image_pixels=9)
    settings.build_settings(args, ["training"], file_values)
    assert file_values == {"training": {"export": {"max_image_pixels": 500}}}


# ------------------------------------------------- both commands, end to end


def _all_sections(tmp_path, data_root: str) -> str:
    return _write(tmp_path, (
        f"kubeflow:\n  image: {IMAGE}\n  pipeline_root: gs://bucket/root\n"
        f"  data_root: {data_root}\n  serving_dir: gs://bucket/serving\n  model_name: flowers\n"
        "training:\n  epochs: 3\n  batch_size: 8\n  export: {max_image_pixels: 500}\n"
        "ingest:\n  min_examples: 2\n"
        "gate:\n  min_accuracy: 0.7\n  keep_versions: 2\n"
    ))


def test_compile_takes_a_file_with_every_section_and_the_run_flags(tmp_path, data_root, capsys):
    path = _all_sections(tmp_path, data_root)
    output = str(tmp_path / "pipeline.json")
    assert cli.main(["compile", "--config", path, "--output", output,
                     "--epochs", "2", "--tflite", "--min-class-recall", "0.2",
                     "--keep-versions", "3"]) == 0

    with open(output) as f:
        tasks = json.load(f)["pipelineSpec"]["root"]["dag"]["tasks"]

    def parameter(task: str, name: str):
        return tasks[task]["inputs"]["parameters"][name]["runtimeValue"]["constant"]

    training = json.loads(parameter("Trainer", "custom_config"))
    assert (training["epochs"], training["batch_size"]) == (2, 8)
    assert training["export"]["max_image_pixels"] == 500 and training["export"]["tflite"]
    assert "gs://bucket/serving/flowers" in parameter("Pusher", "push_destination")
    assert "Compiled pipeline transferline" in capsys.readouterr().out


def test_run_takes_the_same_file_and_a_flag_overrides_it(tmp_path, data_root, capsys):
    path = _all_sections(tmp_path, data_root)
    # The file is read and merged; the flag's impossible value is the one reported.
    code = cli.main(["run", "--config", path, "--data", data_root,
                     "--workdir", str(tmp_path / "work"), "--keep-versions", "0"])
    assert code == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: keep_versions must be >= 1") and err.count("\n") == 1
    assert not (tmp_path / "work").exists()


def test_compile_bad_file_is_one_line_naming_the_file_and_the_setting(tmp_path, data_root,
                                                                       capsys):
    path = _write(tmp_path, "kubeflow:\n  trainer_cpu: many\n", "cluster.yaml")
    assert cli.main(["compile", "--config", path, "--output", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and path in err
    assert "kubeflow.trainer_cpu: expected a number, got 'many'" in err


def test_compile_refuses_an_impossible_run_flag_naming_the_setting(tmp_path, data_root, capsys):
    path = _all_sections(tmp_path, data_root)
    assert cli.main(["compile", "--config", path, "--output", str(tmp_path / "p.json"),
                     "--span-window", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ingest.span_window 3 does not compile for Kubeflow")


# ------------------------------------------------------- the model name, both commands


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "../../escaped", "a/b", "a b",
                                  "-x", "serving\n"])
def test_a_model_name_that_is_not_one_plain_directory_is_refused(name):
    with pytest.raises(ValueError, match=r"^--model-name must be one directory name of "):
        check_model_name(name, "--model-name")


@pytest.mark.parametrize("name", ["transferline", "flowers.v2", "Cats_and-dogs", "7"])
def test_plain_model_names_are_kept(name):
    assert check_model_name(name) == name


def test_compile_refuses_an_escaping_model_name_naming_the_setting(tmp_path, data_root, capsys):
    path = _all_sections(tmp_path, data_root)
    output = tmp_path / "p.json"
    assert cli.main(["compile", "--config", path, "--output", str(output),
                     "--model-name", "../escaped"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model_name must be one directory name of letters, digits")
    assert err.count("\n") == 1 and "'../escaped'" in err and not output.exists()
