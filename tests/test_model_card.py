"""Model cards: what they say, what they leave out, where they go."""

import re

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
    assert ("**blessed**, against the model being served, scored from "
            "`/work/pipeline/Trainer/model/3`") in text
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
    assert "**blessed**, against the model being served, scored from `/p/Trainer/model/2`" in text


def test_a_change_check_without_a_baseline_reads_as_not_applied():
    check = ThresholdCheck("accuracy", "Overall", "change", 0.9, None, None, max_drop=0.01)
    text = model_card.render_model_card(_facts(gate_checks=(check,), baseline_model=None))

    row = "| accuracy (change) | >= baseline - 0.01 | 0.9000 | n/a | not applied: no baseline yet |"
    assert row in text
    assert "with no model being served to compare against" in text


def test_write_model_card_may_use_another_file_name(tmp_path):
    path = model_card.write_model_card(_facts(), str(tmp_path), model_card.VERSION_CARD_FILE)
    assert path == str(tmp_path / "model_card.md")


_IMG = "<img src=x onerror=alert(1)>"
_HOSTILE_CLASSES = (_IMG, "[x](javascript:alert(1))", "![x](http://evil/)", "a|b", "cat\n# owned")


def _hostile_text_facts() -> ModelCardFacts:
    """Hostile values everywhere the card quotes them as text."""
    return _facts(
        model_name="m*1*",
        backbone="[b](javascript:alert(1))",
        weights="<script>alert(1)</script>",
        pipeline_run="run_1_ & `x`",
        classes=_HOSTILE_CLASSES,
        examples_per_split={"<b>eval": 5},
        images_per_class=dict.fromkeys(_HOSTILE_CLASSES, 100),
        eval_images_per_class=dict.fromkeys(_HOSTILE_CLASSES, 20),
        metrics={"<script>x</script>": 0.5},
        per_class=tuple(ClassScore(name, 20, 0.9, 0.4) for name in _HOSTILE_CLASSES),
        gate_checks=(
            ThresholdCheck("acc|uracy", f"label:{_IMG}", "lower_bound", 0.9, 0.5, True),
        ),
        signatures=(SignatureInfo("serving_default", (f"{_IMG}: string [None]",), ("y|z",)),),
    )


def test_quoted_text_forms_no_tag_link_row_or_heading():
    text = model_card.render_model_card(_hostile_text_facts())

    assert "<img" not in text and "<script" not in text and "<b>" not in text
    assert re.search(r"(?<!\\)\]\(", text) is None  # no `](` left to close a link
    assert (
        "| Classes | 5: &lt;img src=x onerror=alert(1)&gt;, [x\\](javascript:alert(1)), "
        "![x\\](http://evil/), a\\|b, cat \\# owned |"
    ) in text
    assert "# Model card: m\\*1\\*, version 1795446713\n" in text
    assert "| Architecture | [b\\](javascript:alert(1)) backbone (frozen) + new head |" in text
    assert "| Backbone weights | &lt;script&gt;alert(1)&lt;/script&gt; |" in text
    assert "| Pipeline run | run_1\\_ &amp; \\`x\\` |" in text
    assert "- Images per split: &lt;b&gt;eval 5" in text
    assert "| a\\|b | 20 | 0.9000 | 0.4000 |" in text
    assert "| cat \\# owned | 100 | 20 |" in text
    assert "| &lt;script&gt;x&lt;/script&gt; | 0.5000 |" in text
    assert (
        "| acc\\|uracy (value, label:&lt;img src=x onerror=alert(1)&gt;) | >= 0.5000 "
        "| 0.9000 | n/a | pass |"
    ) in text
    signature = "| `serving_default` | &lt;img src=x onerror=alert(1)&gt;: string [None] | y\\|z |"
    assert signature in text
    assert "Recall below 0.5 on: &lt;img src=x onerror=alert(1)&gt;, [x\\](javascript" in text

    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert len(headings) == 8 and not any("owned" in line for line in headings)
    tables = re.findall(r"(?m)^(\|.*\|\n\|(?:---\|)+\n(?:\|.*\|\n?)+)", text)
    assert len(tables) == 6
    for block in tables:
        lines = block.strip().split("\n")
        columns = {len(re.findall(r"(?<!\\)\|", line)) for line in lines}
        assert len(columns) == 1, block  # a `|` in a value adds no column


def _hostile_code_facts() -> ModelCardFacts:
    """Hostile values everywhere the card quotes them as code."""
    return _facts(
        model_name=f"m {_IMG}",
        version="7",
        serving_path=f"/srv/a```b|c/m {_IMG}/7",
        model_uri="/p/Trainer/model/7\n# owned",
        baseline_model="`/p/Trainer/model/3`",
        training_config={"note": _IMG, "sh": "`x`"},
        signatures=(
            SignatureInfo("serving`default", ("x: string [None]",), ("y: string [None]",)),
        ),
    )


def test_quoted_code_keeps_its_fence_and_shell_word():
    text = model_card.render_model_card(_hostile_code_facts())

    assert "# Model card: m &lt;img src=x onerror=alert(1)&gt;, version 7\n" in text
    assert f"| Serving directory | ````/srv/a```b\\|c/m {_IMG}/7```` |" in text
    assert "| Source model artifact | `/p/Trainer/model/7 # owned` |" in text
    assert "against the model being served, scored from `` `/p/Trainer/model/3` ``." in text
    assert f"Training settings: `note={_IMG}`, `` sh=`x` ``." in text
    assert "| ``serving`default`` | x: string [None] | y: string [None] |" in text
    assert (
        "````bash\n"
        f"docker run -p 8501:8501 -v '/srv/a```b|c/m {_IMG}:/models/m {_IMG}' "
        f"-e 'MODEL_NAME=m {_IMG}' tensorflow/serving\n"
    ) in text
    assert (
        "    http://localhost:8501/v1/models/m%20%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"
        "/versions/7:predict\n````"
    ) in text
    predict = f"transferline predict --model '/srv/a```b|c/m {_IMG}/7' image.jpg"
    assert f"````bash\n{predict}\n````" in text
    assert not any(line.startswith("# owned") for line in text.splitlines())


_IMG_SHOWN = "&lt;img src=x onerror=alert(1)&gt;"


@pytest.mark.parametrize(
    "facts, shown",
    [
        (
            _hostile_text_facts,
            f"<td>Classes</td>\n<td>5: {_IMG_SHOWN}, [x](javascript:alert(1)), "
            "![x](http://evil/), a|b, cat # owned</td>",
        ),
        (
            _hostile_code_facts,
            f"<td>Serving directory</td>\n<td><code>/srv/a```b|c/m {_IMG_SHOWN}/7</code></td>",
        ),
    ],
)
def test_markdown_renderers_make_no_tag_or_link_of_the_values(facts, shown):
    """CommonMark with GFM tables and raw HTML on (markdown-it) shows each value as it
    is; neither it nor Python-Markdown makes a tag, link or heading of one."""
    markdown_it = pytest.importorskip("markdown_it")
    markdown = pytest.importorskip("markdown")
    text = model_card.render_model_card(facts())
    gfm = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
    pages = {
        "markdown-it": gfm,
        "Python-Markdown": markdown.markdown(text, extensions=["tables", "fenced_code"]),
    }

    for renderer, page in pages.items():
        for forbidden in ("<img", "<script", "<a ", "<b>", "<em>", "<strong>m", "owned</h"):
            assert forbidden not in page, (renderer, forbidden)
        assert _IMG_SHOWN in page, renderer
        assert len(re.findall(r"<h[12]>", page)) == 8, renderer
    assert shown in gfm
