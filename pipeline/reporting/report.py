"""`transferline report`: one self-contained HTML page about a pipeline run, and a
model card for each pushed version.

The page (`<workdir>/reports/report_<run>.html` unless told otherwise) shows the
dataset, training curves, per-class metrics, the confusion matrix, misclassified
eval images, the blessing decision and the run's lineage (see
`pipeline.reporting.report_data` for where each comes from). Model cards
(`model_card_<version>.md`) are written beside it: this run's version's card is
always rewritten; any other version still in the serving directory that has no
card yet gets one from the run that pushed it.
"""

from __future__ import annotations

import dataclasses
import os
import re

from ml_metadata import metadata_store

from components import model_card
from pipeline.names import PIPELINE_NAME
from pipeline.reporting import eval_predictions, html, report_data, runs

REPORTS_DIR = "reports"


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote."""

    html: str
    model_cards: tuple[str, ...]


def default_output(workdir: str, run_name: str) -> str:
    """`<workdir>/reports/report_<run name, made file-safe>.html`."""
    return os.path.join(workdir, REPORTS_DIR, f"report_{_file_safe(run_name)}.html")


def write_report(
    workdir: str,
    output: str | None = None,
    *,
    run_name: str | None = None,
    max_misclassified: int = eval_predictions.DEFAULT_MAX_MISCLASSIFIED,
    pipeline_name: str = PIPELINE_NAME,
) -> ReportFiles:
    """Writes the HTML report of one run (the latest by default) and the model cards.

    Args:
        workdir: A `transferline run` work directory.
        output: The HTML file, or an existing directory to write it into;
            default `default_output(...)`. Model cards go beside it.
        run_name: The ML Metadata pipeline run to report on (default: latest).
        max_misclassified: Most misclassified images shown.
        pipeline_name: The pipeline's name in ML Metadata.

    Returns:
        The files written.

    Raises:
        runs.ReportError: No ML Metadata in `workdir`, or no such run.
    """
    if max_misclassified < 0:
        raise runs.ReportError(f"max images must be >= 0, got {max_misclassified}")
    store = runs.open_store(workdir)
    data = report_data.gather_report_data(
        workdir,
        pipeline_name=pipeline_name,
        run_name=run_name,
        max_misclassified=max_misclassified,
        store=store,
    )
    if output is None:
        output = default_output(workdir, data.run.name)
    elif os.path.isdir(output):
        output = os.path.join(output, os.path.basename(default_output(workdir, data.run.name)))
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)

    cards = _write_model_cards(data, store, out_dir)
    page = html.render_html(
        data, model_card_links={version: os.path.basename(path) for version, path in cards.items()}
    )
    _write_atomically(output, page)
    return ReportFiles(html=output, model_cards=tuple(sorted(cards.values())))


def _write_model_cards(
    data: report_data.ReportData, store: metadata_store.MetadataStore, out_dir: str
) -> dict[str, str]:
    """This run's version's card, and one for every other version still served that
    has none in `out_dir` (from the run that pushed it). Returns {version: path}."""
    cards = {}
    facts = report_data.version_card(data)
    if facts is not None:
        cards[facts.version] = model_card.write_model_card(facts, out_dir)
    pipeline_name = data.run.pipeline_name
    for version_dir, pushing_run in sorted(runs.pushed_runs(store, pipeline_name).items()):
        version = os.path.basename(version_dir.rstrip("/"))
        card_path = os.path.join(out_dir, model_card.model_card_filename(version))
        if version in cards or os.path.exists(card_path) or not os.path.isdir(version_dir):
            continue
        older = report_data.gather_report_data(
            data.workdir,
            pipeline_name=pipeline_name,
            run_name=pushing_run,
            max_misclassified=0,
            store=store,
        )
        older_facts = report_data.version_card(older)
        if older_facts is not None:
            cards[version] = model_card.write_model_card(older_facts, out_dir)
    return cards


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def _write_atomically(path: str, text: str) -> None:
    """Writes beside `path`, then renames: a reader never sees half a page."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)
