"""Rendering: charts and the confusion matrix are valid SVG, thumbnails decode,
text is escaped, and a run that stopped half-way still gets a whole page."""

import base64
import dataclasses
import io
import xml.etree.ElementTree as ElementTree

from PIL import Image

from pipeline.reporting import html as report_html
from pipeline.reporting import report_data as rd
from pipeline.reporting import runs
from tests.conftest import encode, make_image

_SVG = "{http://www.w3.org/2000/svg}"


def _svg(text: str) -> ElementTree.Element:
    return ElementTree.fromstring(text)


def _texts(svg: ElementTree.Element) -> list[str]:
    return ["".join(node.itertext()) for node in svg.iter(f"{_SVG}text")]


def test_confusion_matrix_names_every_class_and_shows_every_count():
    classes = ["cat", "dog", "<bird>"]
    matrix = [[5, 1, 0], [2, 7, 0], [0, 0, 3]]

    svg = _svg(report_html.confusion_matrix_svg(classes, matrix))

    texts = _texts(svg)
    for name in classes:
        assert sum(name in text for text in texts) == 2  # row label and column label
    cells = [rect for rect in svg.iter(f"{_SVG}rect") if rect.find(f"{_SVG}title") is not None]
    assert len(cells) == 9
    titles = ["".join(rect.find(f"{_SVG}title").itertext()) for rect in cells]
    assert "true dog, predicted cat: 2" in titles
    assert "true <bird>, predicted <bird>: 3" in titles
    counts = sorted(int(t) for t in texts if t.isdigit())
    assert counts == sorted(n for row in matrix for n in row)


def test_confusion_matrix_colours_mistakes_apart_from_hits():
    svg = _svg(report_html.confusion_matrix_svg(["a", "b"], [[3, 1], [0, 4]]))
    fills = {
        "".join(rect.find(f"{_SVG}title").itertext()): rect.get("fill")
        for rect in svg.iter(f"{_SVG}rect")
        if rect.find(f"{_SVG}title") is not None
    }
    hit, miss, empty = (
        fills["true a, predicted a: 3"],
        fills["true a, predicted b: 1"],
        fills["true b, predicted a: 0"],
    )
    assert len({hit, miss, empty}) == 3
    red, _, blue = Image.new("RGB", (1, 1), miss).getpixel((0, 0))
    assert red > blue  # mistakes are red


def test_line_chart_draws_one_line_per_series():
    svg = _svg(
        report_html.line_chart_svg(
            "loss", {"train": [1.0, 0.6, 0.4], "validation": [1.1, 0.8, float("nan")]}
        )
    )
    assert len(list(svg.iter(f"{_SVG}polyline"))) == 2
    assert len(list(svg.iter(f"{_SVG}circle"))) == 5  # the NaN is left out
    texts = _texts(svg)
    assert "loss" in texts and "train" in texts and "validation" in texts and "epoch" in texts


def test_line_chart_copes_with_one_epoch_and_flat_values():
    svg = _svg(report_html.line_chart_svg("accuracy", {"train": [0.5], "validation": [0.5]}))
    assert not list(svg.iter(f"{_SVG}polyline"))
    assert len(list(svg.iter(f"{_SVG}circle"))) == 2


def test_history_charts_mark_phases_and_the_kept_epoch():
    training = rd.TrainingSummary(
        config={},
        phases={
            "head": {"loss": (1.0, 0.8), "val_loss": (0.9, 0.7)},
            "fine_tuning": {"loss": (0.5, 0.4), "val_loss": (0.6, 0.65)},
        },
        best={"phase": "fine_tuning", "epoch": 1, "val_loss": 0.6},
        unfrozen_layers=("block_16",),
        model_uri=None,
        model_id=None,
        model_run_uri=None,
        transform_graph_uri=None,
    )
    (loss,) = report_html.history_charts(training)
    svg = _svg(loss)

    assert "fine_tuning" in _texts(svg) and "head" in _texts(svg)
    assert any(line.get("stroke-dasharray") for line in svg.iter(f"{_SVG}line"))
    (kept,) = [c for c in svg.iter(f"{_SVG}circle") if c.get("r") == "7"]
    validation_dots = [c for c in svg.iter(f"{_SVG}circle") if c.get("r") == "3"][4:]
    assert (kept.get("cx"), kept.get("cy")) == (
        validation_dots[2].get("cx"),
        validation_dots[2].get("cy"),
    )


def _decode_data_uri(uri: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))


def test_thumbnails_are_jpeg_data_uris_of_the_right_size():
    small = _decode_data_uri(
        report_html.thumbnail_data_uri(encode(make_image((200, 30, 30), 1, size=40)))
    )
    assert small.size == (128, 128)
    assert small.getpixel((64, 64))[0] > 100  # still red
    wide = Image.new("RGB", (600, 300), (0, 0, 255))
    assert _decode_data_uri(report_html.thumbnail_data_uri(encode(wide))).size == (128, 64)


def test_an_unreadable_image_becomes_a_grey_tile():
    tile = _decode_data_uri(report_html.thumbnail_data_uri(b"not an image"))
    assert tile.size == (128, 128)


def _stopped_run() -> rd.ReportData:
    """A run whose Trainer failed: examples, no model, no evaluation, no push."""
    examples = runs.ArtifactRef("examples", 1, "Examples", "/w/pipeline/examples/1", {})
    executions = (
        runs.ExecutionRef(
            1,
            "ImageFolderExampleGen",
            "components.X",
            "COMPLETE",
            1_000,
            5_000,
            {"input_base": "/data"},
            (),
            (examples,),
        ),
        runs.ExecutionRef(7, "Trainer", "tfx.Trainer", "FAILED", 6_000, 9_000, {}, (examples,), ()),
    )
    run = runs.RunRecord("transferline", "run-<1>", 2, 1_000, executions)
    return rd.ReportData(
        workdir="/w",
        run=run,
        summary={"classes": ["a"], "steps": {}},
        dataset=rd.DatasetSummary(
            input_base="/data",
            fingerprint="sha256:f",
            span=0,
            examples_uri=examples.uri,
            examples_id=1,
            counts={"train": {"a": 3, "<b>": 2}, "eval": {"a": 1}},
            files={"seen": 7, "kept": 6, "skipped": 1},
            not_used=({"path": "a/<x>.jpg", "reason": "skipped: empty file"},),
        ),
        training=None,
        predictions=None,
        gate=None,
        push=None,
        notes=("Trainer (execution 7) ended FAILED",),
        generated_at="now",
    )


def test_a_stopped_run_still_gets_every_section():
    page = report_html.render_html(_stopped_run())

    for anchor in (
        "dataset",
        "training",
        "metrics",
        "confusion",
        "misclassified",
        "gate",
        "lineage",
    ):
        assert f'<section id="{anchor}">' in page
    assert "1 step(s) did not complete" in page
    assert "Trainer (execution 7) ended FAILED" in page
    assert "The run has no Trainer execution." in page
    assert "The run has no Evaluator execution." in page
    assert '<span class="bad">FAILED</span>' in page


def test_an_abandoned_step_is_shown_as_a_failure():
    data = _stopped_run()
    trainer = dataclasses.replace(data.run.executions[1], state="ABANDONED")
    run = dataclasses.replace(data.run, executions=(data.run.executions[0], trainer))

    page = report_html.render_html(dataclasses.replace(data, run=run))

    assert '<span class="bad">ABANDONED</span>' in page


def test_text_from_the_run_is_escaped():
    page = report_html.render_html(_stopped_run())

    assert "<td>&lt;b&gt;</td>" in page and "<td><b></td>" not in page
    assert "a/&lt;x&gt;.jpg" in page
    assert "run-&lt;1&gt;" in page


def test_a_model_card_link_stays_a_link_to_a_file_beside_the_page():
    run = dataclasses.replace(
        _stopped_run(), push=rd.PushSummary(True, "/srv/m/7", None, None)
    )
    hostile = 'javascript:alert(1)" onmouseover="x'

    page = report_html.render_html(run, model_card_links={"7": hostile})

    assert (
        '<a href="javascript%3Aalert%281%29%22%20onmouseover%3D%22x">'
        "javascript:alert(1)&quot; onmouseover=&quot;x</a>"
    ) in page
    assert 'href="javascript:' not in page and 'onmouseover="' not in page
    plain = report_html.render_html(run, model_card_links={"7": "model_card_7.md"})
    assert '<a href="model_card_7.md">model_card_7.md</a>' in plain
    other_host = report_html.render_html(run, model_card_links={"7": "//evil.example/x.md"})
    assert 'href="%2F%2Fevil.example%2Fx.md"' in other_host
