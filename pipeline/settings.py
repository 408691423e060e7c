"""Every setting a command takes: its flag, its config-file section, and how the two merge.

`FLAGS` declares each settings flag once, as the setting it overrides: a section of
the config file (`training`, `ingest`, `gate`, `kubeflow`) and a (dotted) field of that
section's settings class (`export.max_image_pixels` is `TrainingConfig.export`'s). A
setting's value is the flag given on the command line, else the `--config` file's,
else the settings class's default: flags default to None, so defaults live once, in
the settings classes. `transferline run` takes the training, ingest and gate flags
(and ignores a file's kubeflow section); `compile`, `submit` and `schedule` take
those and the kubeflow ones.

    parser = argparse.ArgumentParser()
    add_settings_flags(parser, LOCAL_SECTIONS)
    configs = settings_from_args(parser.parse_args(argv), LOCAL_SECTIONS)
    configs["training"]  # a validated TrainingConfig

Only the light settings classes are imported here; TrainingConfig (which imports
TensorFlow) is imported when a command builds its settings, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from components.config import GateConfig, IngestConfig
from pipeline.kubeflow_settings import KubeflowConfig
from trainer import config_file

TRAINING = "training"
INGEST = "ingest"
GATE = "gate"
KUBEFLOW = "kubeflow"
SECTIONS = (TRAINING, INGEST, GATE, KUBEFLOW)
"""The config file's sections, in the order commands list them."""
LOCAL_SECTIONS = (TRAINING, INGEST, GATE)
"""What `transferline run` reads; the cluster settings are the kubeflow section."""

_GROUP_TITLES = {
    TRAINING: "training settings (override --config)",
    INGEST: "ingest and data gate settings (override --config)",
    GATE: "blessing gate and push settings (override --config)",
    KUBEFLOW: "cluster settings (override --config)",
}


def settings_class(section: str) -> type:
    """The settings class of a config-file section."""
    if section == TRAINING:
        from trainer.config import TrainingConfig  # imports TensorFlow

        return TrainingConfig
    return {INGEST: IngestConfig, GATE: GateConfig, KUBEFLOW: KubeflowConfig}[section]


@dataclasses.dataclass(frozen=True)
class SettingFlag:
    """One command-line flag that overrides one setting.

    Attributes:
        flag: The option, e.g. "--max-image-pixels".
        section: Its config-file section, e.g. "training".
        setting: The field it sets in that section's settings class; dots reach into
            nested settings ("export.max_image_pixels").
        type: The type of the value after the flag (str, int or float).
        help: Help text; "{default}" is replaced by the setting's default (only for
            sections whose class imports no TensorFlow: not training).
        metavar: The value's name in the help.
        repeatable: The flag may be given several times; the setting is the list.
        switch: A flag without a value that sets the setting to this (True or False).
    """

    flag: str
    section: str
    setting: str
    type: type = str
    help: str = ""
    metavar: str | None = None
    repeatable: bool = False
    switch: bool | None = None

    @property
    def dest(self) -> str:
        """The argparse attribute: the setting's own (last) name."""
        return self.setting.rsplit(".", 1)[-1]


FLAGS: tuple[SettingFlag, ...] = (
    # training: trainer.config.TrainingConfig
    SettingFlag("--backbone", TRAINING, "backbone", str,
        "the pretrained network: efficientnet_lite0, vgg16, ... (README), or hub:DIR "
        "for a TF-Hub feature-vector SavedModel"),
    SettingFlag("--weights", TRAINING, "weights", str,
        "'imagenet', 'package', 'none', or a local weights file"),
    SettingFlag("--epochs", TRAINING, "epochs", int,
        "most head-phase epochs (early stopping may end sooner)", metavar="N"),
    SettingFlag("--image-size", TRAINING, "image_size", int,
        "side of the square model input (default: the backbone's)", metavar="N"),
    SettingFlag("--batch-size", TRAINING, "batch_size", int, "examples per training step",
        metavar="N"),
    SettingFlag("--learning-rate", TRAINING, "learning_rate", float,
        "learning rate of the head phase", metavar="RATE"),
    SettingFlag("--feature-engine", TRAINING, "feature_engine", str,
        "what runs the frozen backbone once for cached training: 'auto' (TFLite's "
        "XNNPACK on CPU-only hosts), 'tensorflow', 'tflite'"),
    SettingFlag("--max-image-pixels", TRAINING, "export.max_image_pixels", int,
        "pixel budget of one served image: the model refuses an image declaring more",
        metavar="N"),
    SettingFlag("--tflite", TRAINING, "export.tflite", help="also export a TFLite model beside "
        "the SavedModel, checked to agree", switch=True),
    SettingFlag("--tune", TRAINING, "tuning.enabled", help="search the head's dropout, hidden "
        "units, learning rate, optimizer and weight decay on the cached vectors first "
        "(TFX's Tuner)", switch=True),
    SettingFlag("--tune-trials", TRAINING, "tuning.max_trials", int,
        "with --tune: most head settings tried", metavar="N"),
    SettingFlag("--tune-seconds", TRAINING, "tuning.max_seconds", float,
        "with --tune: no trial starts after this many seconds", metavar="S"),
    SettingFlag("--no-warm-start", TRAINING, "warm_start",
        help="train from scratch, not from the served version's weights", switch=False),
    # ingest: components.config.IngestConfig
    SettingFlag("--eval-percent", INGEST, "eval_percent", int,
        "eval share when the folder is not split (default {default})", metavar="N"),
    SettingFlag("--test-percent", INGEST, "test_percent", int,
        "test share (for reporting) when the folder is not split (default {default})",
        metavar="N"),
    SettingFlag("--min-images-per-class", INGEST, "min_images_per_class", int,
        "a class with fewer usable images stops the run (default {default})", metavar="N"),
    SettingFlag("--span", INGEST, "span", int,
        "with span-N folders: the span to ingest (default: the latest)", metavar="N"),
    SettingFlag("--span-window", INGEST, "span_window", int,
        "with span-N folders: train on the last N spans ingested (default {default})",
        metavar="N"),
    SettingFlag("--min-examples", INGEST, "min_examples", int,
        "data gate: fewest examples to train on (default {default})", metavar="N"),
    SettingFlag("--max-label-drift", INGEST, "max_label_drift", float,
        "data gate: largest L-infinity label drift from the previous span "
        "(default {default})", metavar="X"),
    # gate: components.config.GateConfig
    SettingFlag("--min-accuracy", GATE, "min_accuracy", float,
        "absolute blessing bound (default {default})", metavar="X"),
    SettingFlag("--max-accuracy-drop", GATE, "max_accuracy_drop", float,
        "largest accepted accuracy drop against the version being served (default {default})",
        metavar="X"),
    SettingFlag("--min-class-recall", GATE, "min_class_recall", float,
        "blessing bound on every class's recall, 0 for none (default {default})", metavar="X"),
    SettingFlag("--accuracy-top-k", GATE, "accuracy_top_k", int,
        "k of the reported top-k accuracy, shown with more than k classes "
        "(default {default})", metavar="K"),
    SettingFlag("--keep-versions", GATE, "keep_versions", int,
        "pushed versions kept under the serving dir (default {default})", metavar="N"),
    # kubeflow: pipeline.kubeflow_settings.KubeflowConfig
    SettingFlag("--image", KUBEFLOW, "image", str,
        "container image with this project (kubeflow/Dockerfile)"),
    SettingFlag("--pipeline-root", KUBEFLOW, "pipeline_root", str,
        "artifact root as the pods see it", metavar="URI"),
    SettingFlag("--data", KUBEFLOW, "data_root", str, "image folder as the pods see it",
        metavar="URI"),
    SettingFlag("--serving-dir", KUBEFLOW, "serving_dir", str,
        "TF Serving base dir; models go to <dir>/<model>", metavar="URI"),
    SettingFlag("--model-name", KUBEFLOW, "model_name", str,
        "TF Serving model name (default: {default})", metavar="NAME"),
    SettingFlag("--pipeline-name", KUBEFLOW, "pipeline_name", str,
        "KFP pipeline name (default: {default})", metavar="NAME"),
    SettingFlag("--layout", KUBEFLOW, "layout", str,
        "data folder layout: classes, presplit, span-classes, ... or 'auto', which lists "
        "the folder at compile time (default: {default})"),
    SettingFlag("--gpus", KUBEFLOW, "trainer_gpus", int, "Trainer GPUs (default {default})",
        metavar="N"),
    SettingFlag("--gpu-type", KUBEFLOW, "trainer_gpu_type", str,
        "a resource name on Kubeflow Pipelines (default: {default}) or an accelerator type "
        "on Vertex AI (e.g. NVIDIA_TESLA_T4)", metavar="TYPE"),
    SettingFlag("--trainer-cpu", KUBEFLOW, "trainer_cpu", float,
        "Trainer CPU limit (default {default})", metavar="N"),
    SettingFlag("--trainer-memory-gb", KUBEFLOW, "trainer_memory_gb", float,
        "Trainer memory limit (default {default})", metavar="GB"),
    SettingFlag("--node-cpu", KUBEFLOW, "node_cpu", float,
        "CPU request of the other nodes (default {default})", metavar="N"),
    SettingFlag("--node-memory-gb", KUBEFLOW, "node_memory_gb", float,
        "memory request of the other nodes (default {default})", metavar="GB"),
    SettingFlag("--beam-arg", KUBEFLOW, "beam_pipeline_args", str,
        "Beam argument, repeatable; replaces the defaults ({default}); e.g. "
        "--beam-arg=--runner=FlinkRunner", metavar="ARG", repeatable=True),
    SettingFlag("--pvc", KUBEFLOW, "pvc_mounts", str,
        "mount a PersistentVolumeClaim in every task pod, repeatable (needs .yaml)",
        metavar="CLAIM:/PATH", repeatable=True),
    SettingFlag("--no-cache", KUBEFLOW, "enable_cache",
        help="compile with KFP caching off for every task (the ExampleGen and the baseline "
        "always run)", switch=False),
    SettingFlag("--no-baseline", KUBEFLOW, "baseline",
        help="no baseline: the Evaluator applies the absolute bounds only, not the "
        "no-regression check against the version being served", switch=False),
)


def flags_of(sections: Sequence[str]) -> tuple[SettingFlag, ...]:
    """The rows of `FLAGS` for these sections, in table order."""
    return tuple(row for row in FLAGS if row.section in sections)


def add_settings_flags(parser: argparse.ArgumentParser, sections: Sequence[str]) -> None:
    """Adds `--config` and the flags of `sections`, one argument group per section."""
    ignored = [section for section in SECTIONS if section not in sections]
    parser.add_argument(
        "--config", metavar="FILE",
        help=f"YAML/JSON settings in {', '.join(sections)} sections (e.g. a file of recipes/)"
             + (f"; a {', '.join(ignored)} section is ignored" if ignored else "")
             + "; the flags below override it",
    )
    for section in sections:
        group = parser.add_argument_group(_GROUP_TITLES[section])
        for row in flags_of([section]):
            options: dict[str, Any] = {"dest": row.dest, "default": None}
            if row.switch is not None:
                options.update(action="store_const", const=row.switch)
            else:
                options.update(type=row.type, metavar=row.metavar,
                               action="append" if row.repeatable else "store")
            group.add_argument(row.flag, help=_help(row), **options)


def given_flags(args: argparse.Namespace, sections: Sequence[str]) -> list[str]:
    """The settings flags (and --config) given on the command line, sorted."""
    given = [row.flag for row in flags_of(sections) if getattr(args, row.dest, None) is not None]
    if getattr(args, "config", None) is not None:
        given.append("--config")
    return sorted(given)


def read_config_file(path: str, sections: Sequence[str] = SECTIONS) -> dict[str, dict]:
    """The settings of `sections` in a YAML/JSON config file, each value type-checked.

    Other known sections (a kubeflow section for `run`) are accepted and left out.

    Returns:
        Section -> its settings as plain values; sections the file leaves out are absent.

    Raises:
        ConfigError: The file is unreadable, or names an unknown section or setting,
            or a value of the wrong type; the message names the file and the setting.
    """
    return config_file.read_config_file(
        path, {section: settings_class(section) for section in sections},
        ignored_sections=tuple(section for section in SECTIONS if section not in sections),
    )


def build_settings(args: argparse.Namespace, sections: Sequence[str],
                   file_values: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> dict[str, Any]:
    """Each section's settings: the file's values, the given flags on top, validated.

    Returns:
        Section -> its validated settings class instance.

    Raises:
        ValueError: A value has the wrong type or a setting is impossible; the
            message names the setting.
    """
    file_values = file_values or {}
    configs = {}
    for section in sections:
        values = _copy_nested(file_values.get(section) or {})
        for row in flags_of([section]):
            value = getattr(args, row.dest, None)
            if value is not None:
                _set_dotted(values, row.setting, value)
        configs[section] = config_file.build_config(settings_class(section), values).validate()
    return configs


def settings_from_args(args: argparse.Namespace, sections: Sequence[str]) -> dict[str, Any]:
    """`build_settings` over the `--config` file's values, if one was given."""
    file_values = read_config_file(args.config, sections) if args.config else {}
    return build_settings(args, sections, file_values)


def default_value(section: str, setting: str) -> Any:
    """A setting's default, read from its settings class."""
    value: Any = settings_class(section)()
    for name in setting.split("."):
        value = getattr(value, name)
    return value


def _help(row: SettingFlag) -> str:
    if "{default}" not in row.help:
        return row.help
    default = default_value(row.section, row.setting)
    if isinstance(default, (tuple, list)):
        text = " ".join(str(item) for item in default)
    elif isinstance(default, float):
        text = f"{default:g}"
    else:
        text = str(default)
    return row.help.format(default=text).replace("%", "%%")  # argparse expands %(...)s


def _copy_nested(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _copy_nested(value) if isinstance(value, Mapping) else value
            for key, value in values.items()}


def _set_dotted(values: dict[str, Any], setting: str, value: Any) -> None:
    *parents, name = setting.split(".")
    for parent in parents:
        values = values.setdefault(parent, {})
    values[name] = value
