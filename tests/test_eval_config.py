"""The Evaluator's config (make_eval_config), the gate settings, and the lines a
failed check reads as.

The Evaluator itself runs in tests/test_gate_e2e.py (and its output is read in
tests/test_tfma_results.py); these check the config TFMA gets, in a second.
"""

import pytest
import tensorflow_model_analysis as tfma

from components import tfma_results
from components.config import GateConfig
from components.eval_config import make_eval_config
from pipeline.reporting import run_summary


def _thresholds(gate):
    eval_config = make_eval_config(gate)
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(
        eval_config.metrics_specs, eval_config=eval_config
    )
    return {
        (key.name, key.is_diff, key.sub_key.top_k if key.sub_key else None): [
            (list(spec.feature_keys), threshold) for spec, threshold in value
        ]
        for key, value in thresholds.items()
    }


def test_accuracy_gate_applies_to_the_overall_slice_only():
    thresholds = _thresholds(GateConfig(min_accuracy=0.7, max_accuracy_drop=0.02))

    assert set(thresholds) == {("accuracy", False, 1), ("accuracy", True, 1)}
    ((slice_keys, bound),) = thresholds[("accuracy", False, 1)]
    assert slice_keys == [] and bound.lower_bound.value == 0.7
    ((slice_keys, change),) = thresholds[("accuracy", True, 1)]
    assert slice_keys == [] and change.absolute.value == pytest.approx(-0.02)
    assert change.direction == tfma.MetricDirection.HIGHER_IS_BETTER


def test_min_class_recall_bounds_every_true_class_slice():
    thresholds = _thresholds(GateConfig(min_class_recall=0.4))
    bounds = {tuple(keys): t.lower_bound.value for keys, t in thresholds[("accuracy", False, 1)]}
    assert bounds == {(): 0.5, ("label",): 0.4}


def test_metrics_are_sliced_by_true_class_and_read_raw_labels():
    eval_config = make_eval_config(GateConfig(accuracy_top_k=3), num_classes=10)
    (model_spec,) = eval_config.model_specs
    assert model_spec.label_key == "label" and not model_spec.preprocessing_function_names
    assert model_spec.model_type == tfma.TF_GENERIC
    assert [list(s.feature_keys) for s in eval_config.slicing_specs] == [[], ["label"]]
    top_k_spec = eval_config.metrics_specs[1]
    assert list(top_k_spec.binarize.top_k_list.values) == [3]


@pytest.mark.parametrize("num_classes", [None, 3, 5])
def test_top_k_accuracy_only_with_more_than_k_known_classes(num_classes):
    eval_config = make_eval_config(GateConfig(accuracy_top_k=5), num_classes)
    assert all(
        list(spec.binarize.top_k_list.values) != [5] for spec in eval_config.metrics_specs
    )
    with_six = make_eval_config(GateConfig(accuracy_top_k=5), num_classes=6)
    assert [5] in [list(spec.binarize.top_k_list.values) for spec in with_six.metrics_specs]


@pytest.mark.parametrize(
    ("gate", "setting"),
    [
        (GateConfig(min_class_recall=1.5), "min_class_recall"),
        (GateConfig(accuracy_top_k=1), "accuracy_top_k"),
        (GateConfig(keep_versions=0), "keep_versions"),
    ],
)
def test_impossible_gate_settings_are_refused(gate, setting):
    with pytest.raises(ValueError, match=setting):
        gate.validate()


def test_failed_checks_read_as_one_line_each():
    gate = {"checks": [
        {"metric": "accuracy", "slice": "Overall", "kind": "lower_bound", "value": 0.9,
         "threshold": 0.5, "passed": True},
        {"metric": "accuracy", "slice": "Overall", "kind": "change", "value": 0.3,
         "baseline": 0.9, "max_drop": 0.01, "threshold": 0.89, "passed": False},
        {"metric": "accuracy", "slice": "label:cat", "kind": "lower_bound", "value": 0.2,
         "threshold": 0.4, "passed": False},
    ]}
    assert run_summary.failing_checks(gate) == [
        "accuracy on Overall: 0.3000, down from the baseline's 0.9000 by more than 0.01",
        "accuracy on label:cat: 0.2000 < 0.4",
    ]


def test_slice_names():
    assert tfma_results.slice_name(()) == "Overall"
    assert tfma_results.slice_name((("label", b"cat"),)) == "label:cat"
