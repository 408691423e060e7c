"""Model cards: what they say, what they leave out, where they go."""

import pytest

from components import model_card, tfma_results
from components.model_card import ModelCardFacts, SignatureInfo
from components.tfma_results import ClassScore, ThresholdCheck


def _facts(**changes) -> ModelCardFacts:
    values = dict(
        model_name="flowers",
        version="1795446713",
        serving_path="/srv/models/flowers/1795446713",
        pushed_at="2026-11-23 15:11:53 UTC",
        backbone="efficientnet_lite0",
        weights="imagenet",
        input_size=224,
        classes=("daisy", "rose", "tulip"),
        model_uri="/work/pipeline/Trainer/model/7",
        pipeline_run="2026-11-23T15:09:42.231473",
        training_config={"epochs": 10, "head": {"dropout": 0.2}},
        data_source="/data/flowers",
        data_fingerprint="sha256:abc",
        data_span=0,
        examples_per_split={"train": 240, "eval": 60},
        images_per_class={"daisy": 100, "rose": 100, "tulip": 100},
        eval_images_per_class={"daisy": 20, "rose": 20, "tulip": 20},
        files_not_used=2,
        accuracy=0.9,
        metrics={"top_k_accuracy": 0.99},
        per_class=(
            ClassScore("daisy", 20, 0.95, 0.9),
            ClassScore("rose", 20, 0.8, 0.4),
            ClassScore("tulip", 20, None, 0.0),
        ),
        blessed=True,
        gate_checks=(ThresholdCheck("accuracy", "Overall", "lower_bound", 0.9, 0.5, True),),
        baseline_model="/work/pipeline/Trainer/model/3",
        signatures=(
            SignatureInfo(
                "serving_default",
                ("image_bytes: string [None]",),
                ("label: string [None]", "scores: float32 [None, 3]"),
            ),
        ),
    )
    values.update(changes)
    return ModelCardFacts(**values)


def test_card_has_every_section_and_the_facts():
    text = model_card.render_model_card(_facts())

    for heading in (
        "# Model card: flowers, version 1795446713",
        "## Model details",
        "## Training data",
        "## Evaluation",
        "## Gate decision",
        "## Intended use",
        "## Limitations",
        "## How to query",
    ):
        assert heading in text
    assert "| Input size | 224 x 224 RGB |" in text
    assert "| Classes | 3: daisy, rose, tulip |" in text
    assert "| Architecture | efficientnet_lite0 backbone (frozen) + new head |" in text
    tuned = model_card.render_model_card(_facts(fine_tuned_layers=("block_15", "block_16")))
    assert "efficientnet_lite0 backbone (top 2 layers fine-tuned) + new head" in tuned
    assert "| rose | 20 | 0.8000 | 0.4000 |" in text
    assert "| tulip | 20 | n/a | 0.0000 |" in text
    assert "Eval-split accuracy: **0.9000**" in text
    assert "| top_k_accuracy | 0.9900 |" in text
    assert "**blessed**, against the last blessed model `/work/pipeline/Trainer/model/3`" in text
    assert "| accuracy (value) | >= 0.5000 | 0.9000 | n/a | pass |" in text
    assert "`epochs=10`, `head.dropout=0.2`" in text
    assert "/v1/models/flowers/versions/1795446713:predict" in text
    assert "-v /srv/models/flowers:/models/flowers" in text
    assert "transferline predict --model /srv/models/flowers/1795446713 image.jpg" in text
    assert "| `serving_default` | image_bytes: string [None] |" in text
    assert "Recall below 0.5 on: rose, tulip." in text


def test_limitations_follow_from_the_facts():
    demo = model_card.render_model_card(
        _facts(
            weights="none",
            images_per_class={"daisy": 200, "rose": 20, "tulip": 100},
            eval_images_per_class={"daisy": 5, "rose": 0},
        )
    )
    assert "random initialisation" in demo
    assert "Imbalanced classes (20 to 200 images)" in demo
    assert "Not evaluated at all (no eval images): rose, tulip." in demo
    assert "as few as 5 eval images" in demo and "by 20 points" in demo

    plain = model_card.render_model_card(_facts())
    assert "random initialisation" not in plain
    assert "Imbalanced" not in plain
    assert "Not evaluated at all" not in plain
    assert "as few as 20 eval images" in plain  # fewer than 30 per class is still rough


def test_a_card_with_few_facts_says_what_is_not_recorded():
    text = model_card.render_model_card(ModelCardFacts(model_name="m", version="7"))

    assert "| Input size | not recorded |" in text
    assert "Source folder: not recorded" in text
    assert "Eval-split accuracy: **n/a**" in text
    assert "The Evaluator's decision: not recorded" in text
    assert "docker run" in text


def test_table_cells_escape_pipes():
    text = model_card.render_model_card(_facts(classes=("a|b", "c")))
    assert "| Classes | 2: a\\|b, c |" in text


def test_write_model_card_names_the_file_after_the_version(tmp_path):
    path = model_card.write_model_card(_facts(), str(tmp_path / "reports"))

    assert path == str(tmp_path / "reports" / "model_card_1795446713.md")
    assert (
        (tmp_path / "reports" / "model_card_1795446713.md")
        .read_text()
        .startswith("# Model card: flowers, version 1795446713\n")
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model_name": ""}, "model_name"),
        ({"version": ""}, "version"),
        ({"version": "../1"}, "version"),
        ({"input_size": 0}, "input_size"),
    ],
)
def test_write_model_card_refuses_impossible_facts(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        model_card.write_model_card(_facts(**changes), str(tmp_path))
    assert not list(tmp_path.iterdir())


def test_the_evaluators_figures_and_gate_fill_the_card():
    evaluation = tfma_results.Evaluation(
        accuracy=0.875, top_k=tfma_results.TopK(5, 0.99), examples=16,
        class_names=("cat", "dog"), confusion=((6, 2), (0, 8)), has_baseline=True,
        checks=(
            ThresholdCheck("accuracy", "Overall", "lower_bound", 0.875, 0.5, True),
            ThresholdCheck("accuracy", "Overall", "change", 0.875, 0.79, True,
                           baseline=0.8, change=0.075, max_drop=0.01),
            ThresholdCheck("accuracy", "label:cat", "lower_bound", 0.75, 0.8, False),
        ),
        failures=(), rows=(),
    )
    facts = model_card.with_evaluation(
        ModelCardFacts(
            model_name="pets", version="12", serving_path="/srv/pets/12", backbone="vgg16",
            classes=("cat", "dog"), fine_tuned_layers=("block5_conv3",), blessed=True,
            baseline_model="/p/Trainer/model/2",
        ),
        evaluation,
    )
    text = model_card.render_model_card(facts.validate())

    assert "Eval-split accuracy: **0.8750**" in text
    assert "| top_5_accuracy | 0.9900 |" in text
    assert "| cat | 8 | 1.0000 | 0.7500 |" in text and "| dog | 8 | 0.8000 | 1.0000 |" in text
    assert "- Images per split: eval 16" in text
    assert "vgg16 backbone (top 1 layers fine-tuned) + new head" in text
    assert "| accuracy (value) | >= 0.5000 | 0.8750 | n/a | pass |" in text
    assert "| accuracy (change) | >= baseline - 0.01 (>= 0.7900) | 0.8750 | 0.8000 | pass |" in text
    assert "| accuracy (value, label:cat) | >= 0.8000 | 0.7500 | n/a | FAIL |" in text
    assert "**blessed**, against the last blessed model `/p/Trainer/model/2`" in text


def test_a_change_check_without_a_baseline_reads_as_not_applied():
    check = ThresholdCheck("accuracy", "Overall", "change", 0.9, None, None, max_drop=0.01)
    text = model_card.render_model_card(_facts(gate_checks=(check,), baseline_model=None))

    row = "| accuracy (change) | >= baseline - 0.01 | 0.9000 | n/a | not applied: no baseline yet |"
    assert row in text
    assert "with no earlier blessed model to compare against" in text


def test_write_model_card_may_use_another_file_name(tmp_path):
    path = model_card.write_model_card(_facts(), str(tmp_path), model_card.VERSION_CARD_FILE)
    assert path == str(tmp_path / "model_card.md")
