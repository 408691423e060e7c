"""The Trainer module: a pretrained backbone, a new head, optionally fine-tuned.

`run_fn` is TFX Trainer's entry point. It reads the examples through the
Transform graph (`trainer.data`), builds the classifier (`trainer.classifier`),
takes the Tuner's best head settings when it ran
(`trainer.tuning`), starts from an earlier blessed model's weights when they fit
(`trainer.warm_start`), trains the head (on the Embedder's vectors when the
Trainer is given them: their URI comes under the reserved `custom_config` key
`trainer.embeddings.URI_KEY`) and then optionally fine-tunes the top of the
backbone (`trainer.phases`), and exports Transform + backbone + head
(`trainer.export`). The training history is written to
`<model_run_dir>/history.json` and into the exported model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf
from tfx import v1 as tfx

from trainer import classifier, embeddings, export, features, phases, tuning, warm_start
from trainer import strategy as strategies
from trainer.config import TrainingConfig
from trainer.data import TrainingData

HISTORY_FILE = "history.json"
"""In the model run directory: the training history, as JSON."""
_SPLITS = (features.TRAIN_SPLIT, features.EVAL_SPLIT)


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Trains the classifier and exports it; TFX Trainer's entry point."""
    train_and_export(fn_args)


def train_and_export(
    fn_args: tfx.components.FnArgs, strategy: tf.distribute.Strategy | None = None
) -> dict[str, Any]:
    """What `run_fn` does, on `strategy` (default: `trainer.strategy.make_strategy()`).

    Returns:
        The training history written to `<model_run_dir>/history.json`.
    """
    custom_config = dict(fn_args.custom_config or {})
    embeddings_uri = custom_config.pop(embeddings.URI_KEY, None)
    config = TrainingConfig.from_dict(custom_config)
    tuned = tuning.best_values(fn_args.hyperparameters)
    if tuned is not None:
        config = tuning.with_hyperparameters(config, tuned)
    tf.keras.utils.set_random_seed(config.seed)
    data = TrainingData.from_fn_args(fn_args, embeddings_uri)
    counts = {split: data.label_counts(split) for split in _SPLITS}
    num_classes = len(data.class_names)
    classifier.check_classes(config, data.class_names)
    class_weight = phases.class_weights(config, data.class_names, counts[features.TRAIN_SPLIT])
    strategy = strategy or strategies.make_strategy()
    fn_args = strategies.for_this_worker(fn_args, strategy)
    mixed = strategies.use_mixed_precision(config.mixed_precision)
    with strategies.precision_policy(mixed), strategy.scope():
        parts = classifier.build_parts(config, num_classes)
        run = phases.PhaseRunner(parts, data, config, class_weight, fn_args.model_run_dir, counts)
        run.history[tuning.HISTORY_KEY] = tuning.search_record(fn_args.hyperparameters)
        run.history[warm_start.HISTORY_KEY] = warm_start.restore(
            fn_args.base_model, parts, config, data.class_names)
        run.head_phase()
        if config.fine_tuning.enabled:
            run.fine_tuning_phase()
    trained = parts.classifier
    if mixed or strategy.num_replicas_in_sync > 1:
        trained = classifier.float32_copy(parts, config, num_classes)
    export.export_serving_model(
        trained, data.tf_transform_output, fn_args.serving_model_dir, config.export,
        training_record={"config": config.to_dict(), "history": run.history},
    )
    warm_start.save(fn_args.serving_model_dir, parts, config, data.class_names, run.history)
    _write_history(run.history, fn_args.model_run_dir)
    return run.history


def _write_history(history: dict[str, Any], log_dir: str) -> None:
    tf.io.gfile.makedirs(log_dir)
    with tf.io.gfile.GFile(os.path.join(log_dir, HISTORY_FILE), "w") as f:
        json.dump(history, f, indent=2)
