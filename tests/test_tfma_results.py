"""The Evaluator's results as every consumer reads them: the check kinds, their words,
and the `run_summary.json` shape (the README's). Reading real TFMA output is covered
end to end (tests/test_gate_e2e.py, tests/test_report.py)."""

from components.tfma_results import Evaluation, ThresholdCheck, TopK

BOUND = ThresholdCheck("accuracy", "Overall", "lower_bound", 0.93, 0.5, True)
CHANGE = ThresholdCheck("accuracy", "Overall", "change", 0.93, 0.91, False,
                        baseline=0.92, change=0.01, max_drop=0.01)
NO_BASELINE = ThresholdCheck("accuracy", "Overall", "change", 0.93, None, None, max_drop=0.01)


def _evaluation(*checks) -> Evaluation:
    return Evaluation(
        accuracy=0.75, top_k=TopK(5, 0.99), examples=8, class_names=("cat", "dog"),
        confusion=((3, 1), (1, 3)), has_baseline=True, checks=checks, failures=(), rows=(),
    )


def test_checks_read_as_the_readme_records_them():
    assert BOUND.to_json() == {
        "metric": "accuracy", "slice": "Overall", "kind": "lower_bound", "value": 0.93,
        "threshold": 0.5, "passed": True,
    }
    assert CHANGE.to_json() == {
        "metric": "accuracy", "slice": "Overall", "kind": "change", "value": 0.93,
        "baseline": 0.92, "change": 0.01, "max_drop": 0.01, "threshold": 0.91, "passed": False,
    }
    assert ThresholdCheck.from_json(CHANGE.to_json()) == CHANGE


def test_checks_in_words():
    assert (BOUND.requirement, BOUND.threshold_type, BOUND.outcome) == (
        ">= 0.5000", "value", "pass")
    assert (CHANGE.requirement, CHANGE.threshold_type, CHANGE.outcome) == (
        "change >= -0.0100", "change", "FAIL")
    assert NO_BASELINE.outcome == "not applied: no baseline yet"
    assert CHANGE.failure_line() == (
        "accuracy on Overall: 0.9300, down from the baseline's 0.9200 by more than 0.01")
    low = ThresholdCheck("accuracy", "label:cat", "lower_bound", 0.2, 0.4, False)
    assert low.failure_line() == "accuracy on label:cat: 0.2000 < 0.4"


def test_the_summary_keeps_the_applied_checks_and_counts_per_class():
    evaluation = _evaluation(BOUND, NO_BASELINE)

    assert evaluation.gate_json(blessed=True) == {
        "blessed": True, "baseline": True, "checks": [BOUND.to_json()]}
    metrics = evaluation.metrics_json()
    assert metrics["accuracy"] == 0.75 and metrics["examples"] == 8
    assert metrics["top_k_accuracy"] == {"k": 5, "value": 0.99}
    assert metrics["per_class"] == {
        "cat": {"precision": 0.75, "recall": 0.75, "examples": 4},
        "dog": {"precision": 0.75, "recall": 0.75, "examples": 4},
    }
    assert metrics["confusion_matrix"] == {"classes": ["cat", "dog"], "counts": [[3, 1], [1, 3]]}
