"""Warm start: begin training from the weights of the model being served.

Every Trainer run saves, inside its exported SavedModel (the Model artifact's
`Format-Serving/`), an `assets.extra/warm_start/` folder: a `tf.train.Checkpoint`
of the head's weights (and of the backbone's, when they differ from the
pretrained ones because of fine-tuning) and a manifest of what they fit. TF
Serving, TFMA and TFLite conversion ignore `assets.extra/`; the Pusher copies it
with the version, so every served version can start the next training.

The pipeline hands the Trainer the version served when its training data arrived
(`components.served_model`, copied into a Model's `Format-Serving/`) as
`fn_args.base_model`. When that model's backbone, weights, cut, image size and
head shape match this run's settings, and its classes are this run's (in any
order), the head (and the fine-tuned backbone) start from its weights;
otherwise training starts from scratch. Either way the decision is recorded in
the training history under `warm_start`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf

from trainer.classifier import ClassifierParts
from trainer.config import TrainingConfig
from trainer.export import ASSETS_EXTRA

WARM_START_DIR = "warm_start"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_PREFIX = "weights"
HISTORY_KEY = "warm_start"


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a saved head fits: the settings that shape its weights, and the classes."""

    backbone: str
    weights: str
    cut_layer: str | None
    image_size: int
    pooling: str
    dense_units: tuple[int, ...]
    activation: str
    binary: bool
    class_names: tuple[str, ...]
    backbone_saved: bool = False

    @classmethod
    def for_run(cls, config: TrainingConfig, class_names: list[str],
                backbone_saved: bool = False) -> Manifest:
        head = config.head
        return cls(config.backbone, config.weights, config.cut_layer, config.input_size,
                   head.pooling, tuple(head.dense_units), head.activation, head.binary,
                   tuple(class_names), backbone_saved)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        values = json.loads(text)
        values["dense_units"] = tuple(values["dense_units"])
        values["class_names"] = tuple(values["class_names"])
        return cls(**values)


def mismatch(saved: Manifest, current: Manifest) -> str | None:
    """Why a saved head cannot start this run, or None when it can.

    The classes must be the same set (their order may differ); the weights
    setting matters only when the backbone was not saved with the head.
    """
    fields = ["backbone", "cut_layer", "image_size", "pooling", "dense_units", "activation",
              "binary"]
    if not saved.backbone_saved:
        fields.insert(1, "weights")
    for name in fields:
        before, now = getattr(saved, name), getattr(current, name)
        if before != now:
            label = "head." + name if name in ("pooling", "dense_units", "activation",
                                               "binary") else name
            return f"{label} was {_plain(before)}, now {_plain(now)}"
    if set(saved.class_names) != set(current.class_names):
        return (f"the classes were {sorted(saved.class_names)}, "
                f"now {sorted(current.class_names)}")
    return None


def warm_start_dir(serving_model_dir: str) -> str:
    """The `assets.extra/warm_start/` folder inside an exported SavedModel."""
    return os.path.join(serving_model_dir, ASSETS_EXTRA, WARM_START_DIR)


def restore(base_model: str | None, parts: ClassifierParts, config: TrainingConfig,
            class_names: list[str]) -> dict[str, Any]:
    """Loads the base model's saved head (and backbone) into `parts` if they fit.

    Args:
        base_model: `fn_args.base_model`: the base model's `Format-Serving/` path, or None.
        parts: This run's classifier parts, built and not yet trained.
        config: This run's settings.
        class_names: This run's classes, in label-vocabulary order.

    Returns:
        The history record: {"from": the base Model's folder or None, "used":
        bool, "reason": why not (absent when used), "backbone": whether the
        backbone's weights were loaded too}.
    """
    source = os.path.dirname(base_model.rstrip("/")) if base_model else None
    record: dict[str, Any] = {"from": source, "used": False}
    if not config.warm_start:
        return {**record, "reason": "warm_start is off"}
    if base_model is None or not tf.io.gfile.exists(base_model):  # a ServedModel of nothing
        return {"from": None, "used": False,
                "reason": "no model was being served when this data arrived"}
    folder = warm_start_dir(base_model)
    manifest_path = os.path.join(folder, MANIFEST_FILE)
    if not tf.io.gfile.exists(manifest_path):
        return {**record, "reason": f"the base model has no {ASSETS_EXTRA}/{WARM_START_DIR}/"
                                    f"{MANIFEST_FILE}"}
    with tf.io.gfile.GFile(manifest_path) as f:
        saved = Manifest.from_json(f.read())
    reason = mismatch(saved, Manifest.for_run(config, class_names))
    if reason is not None:
        return {**record, "reason": reason}
    _checkpoint(parts, saved.backbone_saved).read(
        os.path.join(folder, CHECKPOINT_PREFIX)).assert_existing_objects_matched()
    _reorder_scores(parts.head_top, list(saved.class_names), class_names, config.head.binary)
    return {**record, "used": True, "backbone": saved.backbone_saved}


def save(serving_model_dir: str, parts: ClassifierParts, config: TrainingConfig,
         class_names: list[str], history: dict[str, Any]) -> str:
    """Saves the trained head (and the backbone, if it changed) for the next run.

    The backbone differs from its pretrained weights when this run fine-tuned it
    or started from a fine-tuned base (see `history[HISTORY_KEY]`).

    Returns:
        The `warm_start/` folder.
    """
    backbone_changed = config.fine_tuning.enabled or bool(
        history.get(HISTORY_KEY, {}).get("backbone"))
    folder = warm_start_dir(serving_model_dir)
    tf.io.gfile.makedirs(folder)
    _checkpoint(parts, backbone_changed).write(os.path.join(folder, CHECKPOINT_PREFIX))
    with tf.io.gfile.GFile(os.path.join(folder, MANIFEST_FILE), "w") as f:
        f.write(Manifest.for_run(config, class_names, backbone_changed).to_json())
    return folder


def _checkpoint(parts: ClassifierParts, with_backbone: bool) -> tf.train.Checkpoint:
    if with_backbone:
        return tf.train.Checkpoint(head=parts.head_top, backbone=parts.base)
    return tf.train.Checkpoint(head=parts.head_top)


def _reorder_scores(head_top: tf.keras.Model, saved: list[str], current: list[str],
                    binary: bool) -> None:
    """Reorders the output layer's units from the saved class order to the current one."""
    if saved == current:
        return
    output = [layer for layer in head_top.layers if isinstance(layer, tf.keras.layers.Dense)][-1]
    kernel, bias = output.get_weights()
    if binary:  # one sigmoid unit for class 1: swapping the classes turns p into 1 - p
        output.set_weights([-kernel, -bias])
        return
    order = [saved.index(name) for name in current]
    output.set_weights([kernel[:, order], bias[order]])


def _plain(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)
