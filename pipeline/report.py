"""`transferline report`: one self-contained HTML page about a pipeline run, and a
model card for each pushed version.

The page (`<workdir>/reports/report_<run>.html` unless told otherwise) shows the
dataset, training curves, per-class metrics, the confusion matrix, misclassified
eval images, the blessing decision and the run's lineage (see
`pipeline.report_data` for where each comes from). Model cards
(`model_card_<version>.md`) are written beside it: this run's version's card is
always rewritten; any other version still in the serving directory that has no
card yet gets one from the run that pushed it.
"""

from __future__ import annotations

import dataclasses
import os
import re

from ml_metadata import metadata_store

from pipeline import local_runner, model_card, report_data, report_html
from pipeline import pipeline as pipeline_def
from trainer.config import recorded_input_size

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
    max_misclassified: int = report_data.DEFAULT_MAX_MISCLASSIFIED,
    pipeline_name: str = local_runner.PIPELINE_NAME,
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
        report_data.ReportError: No ML Metadata in `workdir`, or no such run.
    """
    if max_misclassified < 0:
        raise report_data.ReportError(f"max images must be >= 0, got {max_misclassified}")
    store = report_data.open_store(workdir)
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
    page = report_html.render_html(
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
    facts = facts_from_report_data(data)
    if facts is not None:
        cards[facts.version] = model_card.write_model_card(facts, out_dir)
    pipeline_name = data.run.pipeline_name
    for version_dir, pushing_run in sorted(report_data.pushed_runs(store, pipeline_name).items()):
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
        older_facts = facts_from_report_data(older)
        if older_facts is not None:
            cards[version] = model_card.write_model_card(older_facts, out_dir)
    return cards


def facts_from_report_data(data: report_data.ReportData) -> model_card.ModelCardFacts | None:
    """The model card of the version the run's model serves as; None if it serves nowhere."""
    push = data.push
    if push is None or not push.destination:
        return None
    training, dataset, evaluation, gate = data.training, data.dataset, data.evaluation, data.gate
    config = dict(training.config) if training else {}
    pusher = data.run.execution(pipeline_def.PUSHER)
    overall = {  # Accuracy has its own line on the card.
        m.metric: m.candidate
        for m in (gate.metrics if gate else ())
        if m.slice == "Overall"
        and m.candidate is not None
        and m.metric != pipeline_def.ACCURACY_METRIC
    }
    accuracy = data.summary.get("metrics", {}).get("accuracy")
    if accuracy is None and evaluation is not None:
        accuracy = evaluation.accuracy
    return model_card.ModelCardFacts(
        model_name=push.model_name or "",
        version=push.version or "",
        serving_path=push.destination,
        pushed_at=report_data.iso_time(
            push.pushed_at_ms or (pusher.finished_ms if pusher else None)
        ),
        backbone=str(config.get("backbone", "")),
        weights=str(config.get("weights", "")),
        input_size=recorded_input_size(config),
        classes=tuple(evaluation.model_classes if evaluation else data.summary.get("classes", ())),
        model_uri=(training.model_uri or "") if training else "",
        pipeline_run=data.run.name,
        training_config=config,
        fine_tuned_layers=training.unfrozen_layers if training else (),
        data_source=(dataset.input_base or "") if dataset else "",
        data_fingerprint=(dataset.fingerprint or "") if dataset else "",
        data_span=dataset.span if dataset else None,
        examples_per_split=dict(data.summary.get("examples", {})),
        images_per_class=dict(data.summary.get("images_per_class", {})),
        eval_images_per_class=dict(dataset.counts.get("eval", {})) if dataset else {},
        files_not_used=len(dataset.not_used) if dataset else None,
        accuracy=accuracy,
        metrics=overall,
        per_class=tuple(
            model_card.ClassScore(c.name, c.support, c.precision, c.recall)
            for c in (evaluation.per_class if evaluation else ())
        ),
        blessed=gate.blessed if gate else None,
        gate_checks=tuple(
            model_card.GateCheck(
                metric=f"{c.metric} ({c.kind}{'' if c.slice == 'Overall' else ', ' + c.slice})",
                requirement=c.requirement,
                value=c.value,
                baseline=c.baseline,
                outcome=c.outcome,
            )
            for c in (gate.checks if gate else ())
        ),
        baseline_model=gate.baseline_model_uri if gate else None,
        signatures=evaluation.signatures if evaluation else (),
    )




def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def _write_atomically(path: str, text: str) -> None:
    """Writes beside `path`, then renames: a reader never sees half a page."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)
