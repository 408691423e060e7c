"""What the Evaluator measures, and the gate a candidate must pass to be blessed.

`make_eval_config` is the one definition of the metrics and thresholds;
`components.tfma_results` reads back what TFMA measured and decided with them.
"""

from __future__ import annotations

import json

import tensorflow_model_analysis as tfma

from components.config import GateConfig
from trainer import export, features

ACCURACY_METRIC = "accuracy"
TOP_K_ACCURACY_METRIC = "top_k_accuracy"


def make_eval_config(
    gate: GateConfig, num_classes: int | None = None, baseline: bool = True
) -> tfma.EvalConfig:
    """What the Evaluator measures, and the gate a candidate must pass to be blessed.

    The model's `serving_examples` signature runs once per eval example (images
    are decoded once, with no separate preprocessing function). Labels are the
    examples' raw `label` strings, which TFMA maps to class indices through the
    model's own `classes` output, so a baseline whose vocabulary orders the
    classes differently is still scored correctly. Metrics are computed overall
    and per true class (each class's slice accuracy is that class's recall):
    accuracy (precision of the top-1 class, micro-averaged), top-k accuracy
    (recall of the top k), the multi-class confusion matrix and example counts.
    All are TFMA-native, so no Keras metric is compiled.

    The gate: overall accuracy at least `min_accuracy`, and no drop of more than
    `max_accuracy_drop` against the version being served; with `min_class_recall`,
    every class's recall at least that. Without a `baseline` model the
    no-regression bound is left out (TFMA refuses a change threshold then).

    Top-k accuracy is measured only when `num_classes` is known to exceed k
    (TFMA fails on a model with k scores or fewer).
    """
    overall = tfma.SlicingSpec()
    per_class = tfma.SlicingSpec(feature_keys=[features.LABEL_KEY])
    accuracy_gate = [
        tfma.PerSliceMetricThreshold(
            slicing_specs=[overall],
            threshold=tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(
                    lower_bound={"value": gate.min_accuracy}
                ),
                change_threshold=tfma.GenericChangeThreshold(
                    direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                    absolute={"value": -gate.max_accuracy_drop - 1e-10},
                ) if baseline else None,
            ),
        )
    ]
    if gate.min_class_recall > 0:
        accuracy_gate.append(
            tfma.PerSliceMetricThreshold(
                slicing_specs=[per_class],
                threshold=tfma.MetricThreshold(
                    value_threshold=tfma.GenericValueThreshold(
                        lower_bound={"value": gate.min_class_recall}
                    )
                ),
            )
        )
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name=export.SERVING_EXAMPLES,
                label_key=features.LABEL_KEY,
                # Known, so TFMA does not try loading each model as Keras first.
                model_type=tfma.TF_GENERIC,
            )
        ],
        slicing_specs=[overall, per_class],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(
                        class_name="Precision",
                        config=json.dumps({"name": ACCURACY_METRIC}),
                        per_slice_thresholds=accuracy_gate,
                    )
                ],
                binarize=tfma.BinarizationOptions(top_k_list={"values": [1]}),
            ),
            *_top_k_metrics_specs(gate.accuracy_top_k, num_classes),
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
                    tfma.MetricConfig(class_name="ExampleCount"),
                ]
            ),
        ],
    )


def _top_k_metrics_specs(k: int, num_classes: int | None) -> list[tfma.MetricsSpec]:
    if num_classes is None or num_classes <= k:
        return []
    return [
        tfma.MetricsSpec(
            metrics=[
                tfma.MetricConfig(
                    class_name="Recall", config=json.dumps({"name": TOP_K_ACCURACY_METRIC})
                )
            ],
            binarize=tfma.BinarizationOptions(top_k_list={"values": [k]}),
        )
    ]
