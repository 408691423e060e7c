"""`transferline report` on a real pipeline run: one self-contained HTML page with
every section, a model card for the pushed version, and a page Chromium renders.

The e2e tests read the report written from the session's shared pipeline run
(tests/shared_run.py: LocalDagRunner, EfficientNet-Lite0, 32 px, one planted mistake).
"""

import base64
import dataclasses
import html.parser
import io
import os
import pathlib
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree

import pytest
from ml_metadata import metadata_store
from PIL import Image
from tfx import v1 as tfx

from pipeline import cli
from pipeline import pipeline as pipeline_def
from tests.conftest import CLASS_COLOURS


def _e2e(test):
    """Marks a test that reads the report of the real pipeline run."""
    return pytest.mark.e2e(pytest.mark.slow(test))


SECTIONS = ("dataset", "training", "metrics", "confusion", "misclassified", "gate", "lineage")
_SVG = "{http://www.w3.org/2000/svg}"


@dataclasses.dataclass(frozen=True)
class Report:
    workdir: pathlib.Path
    html_path: pathlib.Path
    page: str
    printed: str
    summary: dict


class _Page(html.parser.HTMLParser):
    """Every tag with its attributes, and the text of each <section> by id."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.sections: dict[str, str] = {}
        self._section: str | None = None
        self._depth = 0
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            if self._section is None and attrs.get("id"):
                self._section, self._depth = attrs["id"], 0
                self.sections[self._section] = ""
            self._depth += 1

    def handle_endtag(self, tag):
        if tag == "section" and self._section is not None:
            self._depth -= 1
            if self._depth == 0:
                self._section = None

    def handle_data(self, data):
        if self._section is not None:
            self.sections[self._section] += data + " "


@pytest.fixture(scope="module")
def report(shared_run) -> Report:
    return Report(
        workdir=shared_run.workdir,
        html_path=shared_run.report_html,
        page=shared_run.report_html.read_text(encoding="utf-8"),
        printed=shared_run.report.printed,
        summary=shared_run.first.summary,
    )


def _section(report: Report, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', report.page, re.S)
    assert match, f"no section {anchor!r}"
    return match.group(1)


def _svgs(fragment: str) -> list[ElementTree.Element]:
    return [ElementTree.fromstring(svg) for svg in re.findall(r"<svg .*?</svg>", fragment, re.S)]


def _store(workdir: pathlib.Path) -> metadata_store.MetadataStore:
    return metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(workdir / "metadata.sqlite")
        )
    )


@_e2e
def test_report_is_one_self_contained_file(report):
    page = _Page(report.page)

    assert f"report:     {report.html_path}" in report.printed
    assert report.page.startswith("<!DOCTYPE html>")
    assert {tag for tag, _ in page.tags} >= {"html", "style", "svg", "img", "table"}
    assert not {"script", "link", "iframe", "object", "embed"} & {tag for tag, _ in page.tags}
    for tag, attrs in page.tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is None:
                continue
            assert not re.match(r"(https?:)?//", value), (
                f"<{tag} {name}={value!r}> loads from the web"
            )
            if tag == "img":
                assert value.startswith("data:image/"), f"<img src={value[:40]!r}> is not embedded"
            elif not value.startswith("#"):  # the model card beside the page
                assert (report.html_path.parent / value).is_file(), f"<a href={value!r}> is missing"
    assert "url(" not in report.page and "@import" not in report.page


@_e2e
def test_report_has_every_section(report):
    assert list(_Page(report.page).sections) == list(SECTIONS)
    for anchor in SECTIONS:
        assert f'href="#{anchor}"' in report.page


@_e2e
def test_dataset_section_counts_images_per_class_and_split_and_lists_skipped_files(report):
    section = _section(report, "dataset")
    examples = report.summary["examples"]

    header = re.search(r"<thead><tr>(.*?)</tr></thead>", section).group(1)
    splits = re.findall(r"<th[^>]*>(\w+)</th>", header)[1:-1]
    assert sorted(splits) == sorted(examples)
    expected = {"red": [6, 2], "green": [6, 3], "blue": [6, 2]}  # train, eval; a planted image
    for label in CLASS_COLOURS:
        counts = re.search(rf"<td>{label}</td>((?:<td class=\"num\">\d+</td>)+)", section).group(1)
        *per_split, total = map(int, re.findall(r">(\d+)<", counts))
        assert dict(zip(splits, per_split, strict=True)) == dict(
            zip(["train", "eval"], expected[label], strict=True))
        assert total == sum(expected[label])
    all_row = re.search(r"<td><b>all</b></td>(.*?)</tr>", section).group(1)
    *per_split, total = map(int, re.findall(r"<b>(\d+)</b>", all_row))
    assert dict(zip(splits, per_split, strict=True)) == examples and total == 25
    assert "red/empty.jpg" in section and "empty" in report.summary["skipped"][0]["reason"]
    assert report.summary["skipped"][0]["reason"] in _Page(report.page).sections["dataset"]


@_e2e
def test_training_section_draws_loss_and_accuracy_curves(report):
    section = _section(report, "training")
    charts = _svgs(section)

    assert len(charts) == 2
    titles = [next(node.itertext()) for node in (svg.find(f"{_SVG}text") for svg in charts)]
    assert titles == ["loss", "accuracy"]
    for svg in charts:
        assert len(svg.findall(f".//{_SVG}polyline")) == 2  # train and validation, 2 epochs each
    assert "efficientnet_lite0" in section


@_e2e
def test_metrics_table_has_a_row_per_class(report):
    section = _section(report, "metrics")

    for label in CLASS_COLOURS:
        row = re.search(rf"<tr><td>{label}</td>(.*?)</tr>", section)
        assert row, f"no metrics row for {label}"
        assert len(re.findall(r'<td class="num">', row.group(1))) == 5
    assert "precision" in section and "recall" in section
    accuracy = report.summary["metrics"]["accuracy"]
    assert f"Accuracy <b>{accuracy:.4f}</b>" in section  # our count agrees with TFMA's
    assert "accuracy" in section


@_e2e
def test_confusion_matrix_names_the_classes_and_counts_every_eval_image(report):
    (svg,) = _svgs(_section(report, "confusion"))
    texts = ["".join(node.itertext()) for node in svg.iter(f"{_SVG}text")]

    labels = [text for text in texts if text in CLASS_COLOURS]
    assert sorted(labels) == sorted(
        name for name in CLASS_COLOURS for _ in range(2)
    )  # rows, columns
    counts = [int(text) for text in texts if text.isdigit()]
    assert len(counts) == len(CLASS_COLOURS) ** 2
    assert sum(counts) == report.summary["examples"]["eval"]


@_e2e
def test_misclassified_grid_shows_decodable_thumbnails_with_true_and_predicted_labels(report):
    section = _section(report, "misclassified")
    (svg,) = _svgs(_section(report, "confusion"))
    cells = [
        "".join(rect.find(f"{_SVG}title").itertext())
        for rect in svg.iter(f"{_SVG}rect")
        if rect.find(f"{_SVG}title") is not None
    ]
    mistakes = sum(
        int(count)
        for true, predicted, count in (
            re.match(r"true (\w+), predicted (\w+): (\d+)", cell).groups() for cell in cells
        )
        if true != predicted
    )
    # The red image filed under green is a mistake even a perfect model makes.
    assert mistakes >= 1
    figures = re.findall(r"<figure>(.*?)</figure>", section, re.S)
    assert len(figures) == min(mistakes, 60)
    for figure in figures:
        src = re.search(r'src="data:image/jpeg;base64,([^"]+)"', figure).group(1)
        image = Image.open(io.BytesIO(base64.b64decode(src)))
        image.load()
        assert max(image.size) == 128
        true, predicted = re.search(
            r"true <b>(\w+)</b><br>predicted <b[^>]*>(\w+)</b>", figure
        ).groups()
        assert true != predicted and {true, predicted} <= set(CLASS_COLOURS)


@_e2e
def test_gate_section_states_the_decision_thresholds_and_values(report):
    section = _section(report, "gate")
    accuracy = report.summary["metrics"]["accuracy"]

    assert ">BLESSED<" in section and report.summary["blessed"] is True
    assert "Baseline: none: no model was being served: absolute bounds only." in section
    value_row = re.search(
        r"<tr><td>Overall</td><td>accuracy</td><td>value</td>(.*?)</tr>", section
    )
    assert "&gt;= 0.6000" in value_row.group(1) and f">{accuracy:.4f}<" in value_row.group(1)
    assert ">pass<" in value_row.group(1)
    change_row = re.search(r"<td>change</td>(.*?)</tr>", section).group(1)
    assert "change &gt;= -0.0100" in change_row and "not applied: no baseline yet" in change_row


@_e2e
def test_lineage_names_the_data_the_model_and_every_execution(report):
    section = _section(report, "lineage")
    store = _store(report.workdir)

    (examples,) = store.get_artifacts_by_type("Examples")
    fingerprint = examples.custom_properties["input_fingerprint"].string_value
    assert str(report.workdir.parent / "images") in section
    assert fingerprint.startswith("sha256:") and fingerprint in section
    (model,) = [m for m in store.get_artifacts_by_type("Model") if "/Trainer/" in m.uri]
    assert model.uri in section
    assert report.summary["pushed_model"] in section
    # The report was written after the first run: its executions, not the re-run's.
    first_run = min(store.get_contexts_by_type("pipeline_run"),
                    key=lambda context: context.create_time_since_epoch)
    executions = store.get_executions_by_context(first_run.id)
    assert len(executions) == len(pipeline_def.NODE_IDS)
    for execution in executions:
        row = re.search(
            rf'<tr><td class="num">{execution.id}</td><td>(\w+)</td>(.*?)</tr>', section
        )
        assert row, f"execution {execution.id} missing"
        assert row.group(1) in pipeline_def.NODE_IDS
        assert ">COMPLETE<" in row.group(2)
    assert {
        re.search(rf'<td class="num">{e.id}</td><td>(\w+)</td>', section).group(1)
        for e in executions
    } == set(pipeline_def.NODE_IDS)


@_e2e
def test_model_card_is_written_for_the_pushed_version(report):
    version = os.path.basename(report.summary["pushed_model"])
    card_path = report.html_path.parent / f"model_card_{version}.md"

    assert f"model card: {card_path}" in report.printed
    card = card_path.read_text()
    assert card.startswith(f"# Model card: transferline, version {version}\n")
    assert "efficientnet_lite0 backbone" in card and "| Input size | 32 x 32 RGB |" in card
    for label in CLASS_COLOURS:
        assert label in card
    assert "The Evaluator's decision: **blessed**" in card
    assert f"/v1/models/transferline/versions/{version}:predict" in card
    assert "`serving_default` | image_bytes: string [None]" in card
    assert f'href="model_card_{version}.md"' in report.page


def _card_sections(card: str) -> dict[str, str]:
    return {
        part.split("\n", 1)[0]: part.split("\n", 1)[1]
        for part in card.split("\n## ")[1:]
    }


@_e2e
def test_the_pushers_card_and_the_reports_card_agree(report):
    """One builder of card facts: the card in the version and the report's say the same
    of the model, its evaluation, its gate and how to query it; only the report's adds
    the dataset."""
    version_dir = pathlib.Path(report.summary["pushed_model"])
    pushed = _card_sections((version_dir / "model_card.md").read_text())
    reported = _card_sections(
        (report.html_path.parent / f"model_card_{version_dir.name}.md").read_text()
    )

    for heading in ("Model details", "Evaluation", "Gate decision", "How to query"):
        assert pushed[heading] == reported[heading], heading
    gate = pushed["Gate decision"]
    assert "| accuracy (value) | >= 0.6000 |" in gate and "| pass |" in gate
    assert "| accuracy (change) | >= baseline - 0.01 |" in gate
    assert "not applied: no baseline yet" in gate
    assert "- Source folder: not recorded" in pushed["Training data"]
    assert f"- Source folder: `{report.workdir.parent / 'images'}`" in reported["Training data"]


def _chromium() -> str | None:
    return next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )


@_e2e
@pytest.mark.skipif(
    _chromium() is None,
    reason="headless Chromium is not installed (Debian: apt-get install chromium); "
    "the report render check needs it",
)
def test_report_renders_in_headless_chromium(report, tmp_path):
    screenshot = tmp_path / "report.png"
    result = subprocess.run(
        [
            _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}", "--window-size=1280,4000", report.html_path.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and screenshot.is_file(), result.stderr[-2000:]

    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1280, 4000)
    colours = image.getcolors(maxcolors=1 << 24)
    assert len(colours) > 1000, f"only {len(colours)} colours: a blank or unstyled page"
    most_common = max(colours)[0]
    assert most_common < 0.8 * image.width * image.height
    assert image.getpixel((8, 8)) == (0x1D, 0x24, 0x30)  # the header band: our CSS applied


def test_report_refuses_a_workdir_without_metadata(tmp_path, capsys):
    assert cli.main(["report", "--workdir", str(tmp_path / "missing")]) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err == (
        f"error: no ML Metadata at {tmp_path / 'missing' / 'metadata.sqlite'}: "
        f"run `transferline run --workdir {tmp_path / 'missing'}` first\n"
    )
    assert not (tmp_path / "missing").exists()


def test_report_refuses_a_negative_image_count(tmp_path, capsys):
    argv = ["report", "--workdir", str(tmp_path), "--max-images", "-1"]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err == "error: max images must be >= 0, got -1\n"
