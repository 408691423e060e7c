"""Renders `ReportData` as one self-contained HTML page.

Everything is inline: CSS in a <style> element, charts and the confusion matrix
as SVG, images as base64 `data:` URIs. The page loads nothing from anywhere and
has no script.
"""

from __future__ import annotations

import base64
import html
import io
import math
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence

from PIL import Image

from components import model_card
from pipeline.reporting import eval_predictions, runs
from pipeline.reporting import report_data as rd

THUMBNAIL_SIDE = 128
_SERIES_COLOURS = ("#1f6fb2", "#e4761b", "#2a9d55", "#a23b72")
_STATE_CLASS = {
    "COMPLETE": "ok", "CACHED": "ok", "FAILED": "bad", "CANCELED": "bad", runs.ABANDONED: "bad"
}

_CSS = """
:root { --ink:#1d2430; --muted:#5b6675; --line:#d9dee5; --bg:#f5f7fa; --ok:#1e7f4f; --bad:#b3261e;
        --warn:#9a6400; --accent:#1f6fb2; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header { background:#1d2430; color:#fff; padding:20px 32px; }
header h1 { margin:0 0 4px; font-size:24px; }
header .sub { color:#c5ccd6; font-size:13px; }
nav { background:#fff; border-bottom:1px solid var(--line); padding:8px 32px;
      position:sticky; top:0; }
nav a { margin-right:16px; color:var(--accent); text-decoration:none; font-size:14px; }
main { max-width:1200px; margin:0 auto; padding:16px 32px 48px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:16px 24px;
          margin:16px 0; overflow-x:auto; }
h2 { margin:0 0 12px; font-size:20px; }
h3 { margin:16px 0 8px; font-size:16px; }
table { border-collapse:collapse; margin:8px 0; font-size:14px; }
th, td { border-bottom:1px solid var(--line); padding:4px 12px 4px 0; text-align:left;
         vertical-align:top; }
th { color:var(--muted); font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
.time { white-space:nowrap; }
code, .path { font-family:ui-monospace, "DejaVu Sans Mono", monospace; font-size:12.5px;
              word-break:break-all; }
.badges { display:flex; flex-wrap:wrap; gap:12px; margin-top:12px; }
.badge { border-radius:6px; padding:6px 12px; font-weight:600; background:#2e3a4b; color:#fff; }
.badge.ok { background:var(--ok); color:#fff; } .badge.bad { background:var(--bad); color:#fff; }
.settings table { columns: 3; display:block; }
.settings tbody { display:block; }
.settings tr { display:table; width:100%; break-inside:avoid; }
.settings th { width:55%; font-weight:500; }
.figure { display:inline-block; vertical-align:top; margin:0 24px 12px 0; }
.ok { color:var(--ok); font-weight:600; } .bad { color:var(--bad); font-weight:600; }
.muted { color:var(--muted); }
.notes { border-left:4px solid var(--warn); background:#fff8e6; padding:8px 16px; }
.decision { font-size:18px; font-weight:700; padding:8px 14px; border-radius:6px;
            display:inline-block;
            color:#fff; }
.decision.ok { background:var(--ok); color:#fff; }
.decision.bad { background:var(--bad); color:#fff; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(150px, 1fr)); gap:12px; }
.grid figure { margin:0; border:1px solid var(--line); border-radius:6px; padding:8px;
               background:#fafbfc; }
.grid img { width:128px; height:128px; object-fit:contain; display:block; margin:0 auto 6px;
            background:#e9edf2; image-rendering:pixelated; }
.grid figcaption { font-size:12.5px; }
details summary { cursor:pointer; color:var(--accent); margin:8px 0; }
"""


def render_html(data: rd.ReportData, model_card_links: Mapping[str, str] | None = None) -> str:
    """The whole report page.

    Args:
        data: What was gathered about the run.
        model_card_links: Version -> model card file name, relative to the page.
    """
    title = f"Transferline report: run {data.run.name}"
    sections = [
        _notes(data.notes),
        _dataset_section(data.dataset, data.summary.get("warnings", ())),
        _training_section(data.training),
        _metrics_section(data),
        _confusion_section(data.predictions),
        _misclassified_section(data.predictions),
        _gate_section(data.gate),
        _lineage_section(data, model_card_links or {}),
    ]
    nav = "".join(
        f'<a href="#{anchor}">{label}</a>'
        for anchor, label in (
            ("dataset", "Dataset"),
            ("training", "Training"),
            ("metrics", "Metrics"),
            ("confusion", "Confusion matrix"),
            ("misclassified", "Misclassified"),
            ("gate", "Gate"),
            ("lineage", "Lineage"),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"{_header(data, title)}<nav>{nav}</nav><main>{''.join(sections)}</main></body></html>\n"
    )


# ------------------------------------------------------------------------ header


def _header(data: rd.ReportData, title: str) -> str:
    badges = []
    blessed = data.gate.blessed if data.gate else None
    if blessed is not None:
        badges.append(_badge("blessed" if blessed else "not blessed", "ok" if blessed else "bad"))
    if data.push and data.push.destination:
        verb = "pushed" if data.push.pushed_this_run else "already serving as"
        badges.append(_badge(f"{verb} version {data.push.version}", "ok"))
    elif data.push:
        badges.append(_badge("not pushed", "bad"))
    accuracy = data.summary.get("metrics", {}).get("accuracy")
    if accuracy is not None:
        badges.append(_badge(f"eval accuracy {accuracy:.4f}", ""))
    examples = data.summary.get("examples", {})
    if examples:
        counts = ", ".join(f"{split} {n}" for split, n in sorted(examples.items()))
        badges.append(_badge(f"images: {counts}", ""))
    failed = [e for e in data.run.executions if e.state not in ("COMPLETE", "CACHED")]
    if failed:
        badges.append(_badge(f"{len(failed)} step(s) did not complete", "bad"))
    sub = (
        f"pipeline <b>{_e(data.run.pipeline_name)}</b>"
        f" · started {_e(rd.iso_time(data.run.created_ms))}"
        f" · workdir <code>{_e(data.workdir)}</code> · report made {_e(data.generated_at)}"
    )
    return (
        f'<header><h1>{_e(title)}</h1><div class="sub">{sub}</div>'
        f'<div class="badges">{"".join(badges)}</div></header>'
    )


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{_e(text)}</span>'


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{_e(note)}</li>" for note in notes)
    return f'<section class="notes"><b>Not everything could be shown:</b><ul>{items}</ul></section>'


# ----------------------------------------------------------------------- dataset


def _dataset_section(dataset: rd.DatasetSummary | None, warnings: Sequence[str]) -> str:
    body = ['<section id="dataset"><h2>Dataset</h2>']
    if warnings:
        items = "".join(f"<li>{_e(warning)}</li>" for warning in warnings)
        body.append(f'<div class="notes"><b>Data warnings:</b><ul>{items}</ul></div>')
    if dataset is None:
        body.append('<p class="muted">The run made no examples.</p></section>')
        return "".join(body)
    splits = sorted(dataset.counts)
    classes = sorted({name for counts in dataset.counts.values() for name in counts})
    rows = [
        [
            _e(name),
            *(str(dataset.counts[split].get(name, 0)) for split in splits),
            str(sum(dataset.counts[split].get(name, 0) for split in splits)),
        ]
        for name in classes
    ]
    rows.append(
        [
            "<b>all</b>",
            *(f"<b>{sum(dataset.counts[s].values())}</b>" for s in splits),
            f"<b>{sum(sum(c.values()) for c in dataset.counts.values())}</b>",
        ]
    )
    body.append("<h3>Images per class and split</h3>")
    body.append(_table(["class", *splits, "total"], rows, numeric=range(1, len(splits) + 2)))
    files = dataset.files
    if files:
        order = ["seen", "kept", "converted", "skipped", "duplicate", "ignored"]
        names = [n for n in order if n in files] + sorted(set(files) - set(order))
        body.append("<h3>Files</h3>")
        body.append(_table(names, [[str(files[n]) for n in names]], numeric=range(len(names))))
    body.append(f"<h3>Files not used ({len(dataset.not_used)})</h3>")
    if dataset.not_used:
        body.append(
            _table(
                ["file", "reason"],
                [[_path(row["path"]), _e(row["reason"])] for row in dataset.not_used],
            )
        )
    else:
        body.append('<p class="muted">None: every image file was used.</p>')
    body.append("</section>")
    return "".join(body)


# ---------------------------------------------------------------------- training


def _training_section(training: rd.TrainingSummary | None) -> str:
    body = ['<section id="training"><h2>Training</h2>']
    if training is None:
        return body[0] + '<p class="muted">The run has no Trainer execution.</p></section>'
    if training.config:
        settings = sorted(model_card.flatten_settings(training.config).items())
        body.append(
            '<div class="settings">' + _key_values([(k, _e(v)) for k, v in settings]) + "</div>"
        )
    charts = history_charts(training)
    if charts:
        phases = ", ".join(
            f"{phase} {max(map(len, m.values()), default=0)}"
            for phase, m in training.phases.items()
        )
        body.append(f"<h3>Training curves ({training.epochs} epochs: {_e(phases)})</h3>")
        body.extend(f'<div class="figure">{svg}</div>' for svg in charts)
    else:
        body.append('<p class="muted">No training history recorded.</p>')
    if training.best:
        kept = ", ".join(
            f"{k} {v:.4f}" for k, v in sorted(training.best.items()) if isinstance(v, float)
        )
        body.append(
            f"<p>Weights kept from {_e(training.best.get('phase'))} epoch "
            f"{_e(training.best.get('epoch'))}: {_e(kept)}.</p>"
        )
    if training.unfrozen_layers:
        body.append(
            f"<p>Fine-tuned backbone layers ({len(training.unfrozen_layers)}): "
            f"<code>{_e(', '.join(training.unfrozen_layers))}</code></p>"
        )
    body.append("</section>")
    return "".join(body)


def history_charts(training: rd.TrainingSummary) -> list[str]:
    """One SVG line chart per metric: train and validation curves over every phase,
    the phases marked, the kept epoch circled."""
    groups: dict[str, dict[str, list[float | None]]] = {}
    boundaries: list[tuple[int, str]] = []
    offset = 0
    best_index = None
    for phase, metrics in training.phases.items():
        length = max(map(len, metrics.values()), default=0)
        boundaries.append((offset, phase))
        for name, values in metrics.items():
            base = name[len("val_") :] if name.startswith("val_") else name
            label = "validation" if name.startswith("val_") else "train"
            line = groups.setdefault(base, {}).setdefault(label, [])
            line.extend([None] * (offset - len(line)))
            line.extend(values)
        if training.best and training.best.get("phase") == phase:
            best_index = offset + int(training.best.get("epoch", 1)) - 1
        offset += length
    order = sorted(groups, key=lambda base: (base != "loss", base))
    return [
        line_chart_svg(
            base,
            groups[base],
            phases=boundaries if len(boundaries) > 1 else (),
            marked_epoch=best_index,
        )
        for base in order
    ]


def line_chart_svg(
    title: str,
    series: Mapping[str, Sequence[float | None]],
    width: int = 500,
    height: int = 300,
    phases: Sequence[tuple[int, str]] = (),
    marked_epoch: int | None = None,
) -> str:
    """An SVG chart of per-epoch values: one polyline (with dots) per series.

    Args:
        title: The metric's name.
        series: Values per epoch by series name; None where a series has no value.
        width: Pixels.
        height: Pixels.
        phases: (first epoch index, name) of each training phase, drawn as
            dashed dividers.
        marked_epoch: Index of the epoch whose weights were kept, circled.
    """
    left, right, top, bottom = 64, 16, 36, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    epochs = max((len(vs) for vs in series.values()), default=0)
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9:
        pad = max(abs(high) * 0.1, 0.05)
        low, high = low - pad, high + pad
    else:
        pad = (high - low) * 0.08
        low, high = low - pad, high + pad
    if values and 0 <= min(values) and max(values) <= 1:  # e.g. accuracy: stay within [0, 1]
        low, high = max(low, 0.0), min(high, 1.0)

    def x_at(epoch: int) -> float:  # epoch counts from 1
        return left + (plot_w / 2 if epochs <= 1 else (epoch - 1) * plot_w / (epochs - 1))

    def y_at(value: float) -> float:
        return top + plot_h - (value - low) / (high - low) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)} per epoch" '
        'font-family="system-ui, sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{left}" y="20" font-size="14" font-weight="600" fill="#1d2430">'
        f"{_e(title)}</text>",
    ]
    decimals = max(0, 1 - math.floor(math.log10((high - low) / 4)))
    for i in range(5):
        value = low + (high - low) * i / 4
        y = y_at(value)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e3e7ec"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#5b6675">'
            f"{value:.{decimals}f}</text>"
        )
    step = max(1, math.ceil(epochs / 10))
    for epoch in range(1, epochs + 1, step):
        x = x_at(epoch)
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
            f'fill="#5b6675">{epoch}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle" '
        'fill="#5b6675">epoch</text>'
    )
    parts.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" '
        'fill="none" stroke="#9aa4b1"/>'
    )
    for start, name in phases:
        x = x_at(start + 0.5) if start else left
        if start:
            parts.append(
                f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
                'stroke="#5b6675" stroke-dasharray="4 3"/>'
            )
        parts.append(f'<text x="{x + 4:.1f}" y="{top + 14}" fill="#5b6675">{_e(name)}</text>')
    for index, (label, series_values) in enumerate(series.items()):
        colour = _SERIES_COLOURS[index % len(_SERIES_COLOURS)]
        points = [
            (x_at(i + 1), y_at(v))
            for i, v in enumerate(series_values)
            if v is not None and math.isfinite(v)
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        parts.extend(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in points
        )
        if label == "validation" and marked_epoch is not None and marked_epoch < len(series_values):
            value = series_values[marked_epoch]
            if value is not None and math.isfinite(value):
                parts.append(
                    f'<circle cx="{x_at(marked_epoch + 1):.1f}" cy="{y_at(value):.1f}" r="7" '
                    f'fill="none" stroke="{colour}" stroke-width="2">'
                    "<title>kept epoch</title></circle>"
                )
        legend_x = left + plot_w - 110 * (len(series) - index)
        parts.append(f'<rect x="{legend_x + 10}" y="12" width="14" height="4" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 28}" y="18" fill="#1d2430">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------------- metrics


def _metrics_section(data: rd.ReportData) -> str:
    body = ['<section id="metrics"><h2>Metrics</h2>']
    predictions = data.predictions
    if predictions is not None:
        accuracy = predictions.accuracy
        body.append(
            f"<p>Accuracy <b>{_fmt(accuracy)}</b> on {predictions.examples} "
            f"{_e(predictions.split)} images "
            f"({predictions.misclassified_total} wrong), from running "
            f'<span class="path">{_e(predictions.model_dir)}</span> over the eval split.</p>'
        )
        rows = [
            [
                _e(c.name),
                str(c.support),
                str(c.predicted),
                str(c.correct),
                _fmt(c.precision),
                _fmt(c.recall),
            ]
            for c in predictions.per_class
        ]
        body.append(
            _table(
                ["class", "eval images", "predicted as", "correct", "precision", "recall"],
                rows,
                numeric=range(1, 6),
            )
        )
    else:
        body.append(
            '<p class="muted">No per-class figures: the model was not run over the eval split '
            "(see the notes above).</p>"
        )
    if data.gate and data.gate.metrics:
        rows = [
            [
                _e(m.slice),
                _e(m.metric),
                _fmt(m.candidate),
                _fmt(m.baseline),
                _fmt(m.diff, signed=True),
            ]
            for m in data.gate.metrics
        ]
        body.append("<h3>TFMA metrics, as the Evaluator recorded them</h3>")
        body.append(
            _table(["slice", "metric", "candidate", "baseline", "change"], rows, numeric=(2, 3, 4))
        )
    body.append("</section>")
    return "".join(body)


def _confusion_section(predictions: eval_predictions.EvalSummary | None) -> str:
    body = '<section id="confusion"><h2>Confusion matrix</h2>'
    if predictions is None or not predictions.classes:
        return (
            body
            + '<p class="muted">Not available: the model was not run over the eval split.</p>'
            + "</section>"
        )
    return (
        body
        + '<p class="muted">Rows: true class; columns: predicted class. Colour: share of the row '
        "(blue: correct, red: mistakes).</p>"
        + confusion_matrix_svg(predictions.classes, predictions.confusion)
        + "</section>"
    )


def confusion_matrix_svg(classes: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    """An SVG heat map of `matrix[true][predicted]` with the counts in the cells."""
    n = len(classes)
    cell = max(14, min(56, 560 // max(n, 1)))
    names = [name if len(name) <= 24 else name[:23] + "…" for name in classes]
    label_w = 16 + 7 * max((len(name) for name in names), default=4)
    left, top = label_w + 24, int(label_w * 0.75) + 28
    size = cell * n
    width, height = left + size + 16, top + size + 16
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="confusion matrix" '
        'font-family="system-ui, sans-serif" font-size="12" class="confusion-matrix">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{left + size / 2:.1f}" y="14" text-anchor="middle" font-weight="600" '
        'fill="#1d2430">predicted</text>',
        f'<text x="12" y="{top + size / 2:.1f}" text-anchor="middle" font-weight="600" '
        'fill="#1d2430" '
        f'transform="rotate(-90 12 {top + size / 2:.1f})">true</text>',
    ]
    for i, name in enumerate(names):
        label = _e(name) if name == classes[i] else f"<title>{_e(classes[i])}</title>{_e(name)}"
        y = top + i * cell + cell / 2 + 4
        parts.append(
            f'<text x="{left - 6}" y="{y:.1f}" text-anchor="end" fill="#1d2430">{label}</text>'
        )
        x = left + i * cell + cell / 2
        parts.append(
            f'<text x="{x:.1f}" y="{top - 6}" text-anchor="start" fill="#1d2430" '
            f'transform="rotate(-45 {x:.1f} {top - 6})">{label}</text>'
        )
    for i, row in enumerate(matrix):
        total = sum(row)
        for j, count in enumerate(row):
            share = count / total if total else 0.0
            colour = _heat(share, correct=(i == j))
            x, y = left + j * cell, top + i * cell
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{colour}" '
                'stroke="#fff">'
                f"<title>true {_e(classes[i])}, predicted {_e(classes[j])}: {count}</title></rect>"
            )
            if cell >= 22:
                ink = "#fff" if share > 0.55 else "#1d2430"
                parts.append(
                    f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" '
                    f'text-anchor="middle" fill="{ink}">{count}</text>'
                )
    parts.append(
        f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#9aa4b1"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _heat(share: float, correct: bool) -> str:
    """White to blue (correct) or white to red (mistakes) by `share`."""
    end = (31, 111, 178) if correct else (179, 38, 30)
    if share <= 0:
        return "#f3f5f8"
    mixed = [round(255 + (channel - 255) * (0.15 + 0.85 * share)) for channel in end]
    return "#" + "".join(f"{c:02x}" for c in mixed)


# ----------------------------------------------------------------- misclassified


def _misclassified_section(predictions: eval_predictions.EvalSummary | None) -> str:
    body = ['<section id="misclassified"><h2>Misclassified images</h2>']
    if predictions is None:
        body.append(
            '<p class="muted">Not available: the model was not run over the eval split.</p>'
        )
    elif not predictions.misclassified_total:
        body.append('<p class="ok">None: every eval image was classified correctly.</p>')
    else:
        shown = len(predictions.misclassified)
        if shown == predictions.misclassified_total:
            which = "all shown, most confident first"
        elif shown:
            which = f"the {shown} most confident shown, most confident first"
        else:
            which = "none shown (the report was asked for no images)"
        body.append(
            f"<p>{predictions.misclassified_total} of {predictions.examples} "
            f'{_e(predictions.split)} images are wrong; {which}.</p><div class="grid">'
        )
        for item in predictions.misclassified:
            body.append(
                f'<figure><img alt="{_e(item.path)}" src="{thumbnail_data_uri(item.image)}">'
                f"<figcaption>true <b>{_e(item.true_label)}</b><br>predicted "
                f'<b class="bad">{_e(item.predicted_label)}</b> ({item.score:.2f})<br>'
                f'<span class="path muted">{_e(item.path)}</span></figcaption></figure>'
            )
        body.append("</div>")
    body.append("</section>")
    return "".join(body)


def thumbnail_data_uri(image_bytes: bytes, side: int = THUMBNAIL_SIDE) -> str:
    """A JPEG thumbnail (longer side `side`) as a `data:` URI; a grey tile if unreadable."""
    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            image = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        image = Image.new("RGB", (side, side), (200, 200, 200))
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    buffer = io.BytesIO()
    image.resize(size, resample).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# -------------------------------------------------------------------------- gate


def _gate_section(gate: rd.GateSummary | None) -> str:
    body = ['<section id="gate"><h2>Blessing decision</h2>']
    if gate is None:
        return body[0] + '<p class="muted">The run has no Evaluator execution.</p></section>'
    if gate.blessed is None:
        body.append('<p class="muted">No blessing recorded.</p>')
    else:
        kind, text = ("ok", "BLESSED") if gate.blessed else ("bad", "NOT BLESSED")
        body.append(f'<p><span class="decision {kind}">{text}</span></p>')
    if gate.baseline["served_version"] is not None:
        body.append(
            f"<p>Baseline: version {gate.baseline['served_version']}, the one being served, "
            f'from <span class="path">{_e(gate.baseline["from"])}</span> (scored as artifact '
            f'{gate.baseline_model_id} <span class="path">{_e(gate.baseline_model_uri)}</span>).'
            "</p>"
        )
    else:
        body.append(f"<p>Baseline: none: {_e(gate.baseline['note'])}.</p>")
    if gate.checks:
        rows = [
            [
                _e(c.slice),
                _e(c.metric),
                _e(c.threshold_type),
                _e(c.requirement),
                _fmt(c.value),
                _fmt(c.baseline),
                _fmt(c.change, signed=True),
                f'<span class="{_outcome_class(c.outcome)}">{_e(c.outcome)}</span>',
            ]
            for c in gate.checks
        ]
        body.append(
            _table(
                [
                    "slice",
                    "metric",
                    "threshold",
                    "requirement",
                    "value",
                    "baseline",
                    "change",
                    "outcome",
                ],
                rows,
                numeric=(4, 5, 6),
            )
        )
    else:
        body.append('<p class="muted">No thresholds configured.</p>')
    if gate.failures:
        body.append("<h3>Why it was not blessed</h3><ul>")
        body.extend(f"<li>{_e(message)}</li>" for message in gate.failures)
        body.append("</ul>")
    body.append("</section>")
    return "".join(body)


def _outcome_class(outcome: str) -> str:
    return {"pass": "ok", "FAIL": "bad"}.get(outcome, "muted")


# ----------------------------------------------------------------------- lineage


def _lineage_section(data: rd.ReportData, model_card_links: Mapping[str, str]) -> str:
    body = ['<section id="lineage"><h2>Lineage</h2>', "<h3>Data</h3>"]
    if data.dataset is not None:
        d = data.dataset
        body.append(
            _key_values(
                [
                    ("image folder (input_base)", _path(d.input_base)),
                    ("fingerprint", _path(d.fingerprint)),
                    ("span", _e(str(d.span))),
                    ("Examples artifact", f"{d.examples_id} {_path(d.examples_uri)}"),
                ]
            )
        )
    else:
        body.append('<p class="muted">No examples.</p>')
    body.append("<h3>Model</h3>")
    rows = []
    if data.training is not None:
        t = data.training
        rows += [
            ("Model artifact", f"{t.model_id} {_path(t.model_uri)}" if t.model_uri else "none"),
            ("training run (ModelRun)", _path(t.model_run_uri)),
            ("Transform graph", _path(t.transform_graph_uri)),
        ]
    if data.gate is not None:
        rows.append(
            (
                "baseline model",
                f"{data.gate.baseline_model_id} {_path(data.gate.baseline_model_uri)}"
                if data.gate.baseline_model_uri
                else "none",
            )
        )
        rows.append(("evaluation", _path(data.gate.evaluation_uri)))
        rows.append(("blessing", _path(data.gate.blessing_uri)))
    if data.push is not None:
        rows.append(
            (
                "serving version",
                _path(data.push.destination) if data.push.destination else "not pushed",
            )
        )
        if data.push.pushed_at_ms:
            rows.append(("pushed at", _e(rd.iso_time(data.push.pushed_at_ms))))
        card = model_card_links.get(data.push.version or "")
        if card:
            rows.append(("model card", f'<a href="{_file_href(card)}">{_e(card)}</a>'))
    body.append(_key_values(rows) if rows else '<p class="muted">No model.</p>')
    body.append(
        f"<h3>ML Metadata executions (pipeline run {_e(data.run.name)}, context "
        f"{data.run.context_id})</h3>"
    )
    execution_rows = []
    for e in data.run.executions:
        seconds = (e.finished_ms - e.started_ms) / 1000 if e.finished_ms and e.started_ms else None
        execution_rows.append(
            [
                str(e.id),
                _e(e.node_id),
                f'<span class="{_STATE_CLASS.get(e.state, "muted")}">{_e(e.state)}</span>',
                f'<span class="time">{_e(rd.iso_time(e.started_ms))}</span>',
                f'<span class="time">{_e(_finished(e))}</span>',
                f"{seconds:.1f}s" if seconds is not None else "",
                _e(_artifact_ids(e.inputs)),
                _e(_artifact_ids(e.outputs)),
            ]
        )
    body.append(
        _table(
            ["id", "node", "state", "started", "finished", "took", "inputs", "outputs"],
            execution_rows,
            numeric=(0, 5),
        )
    )
    artifacts = {a.id: a for e in data.run.executions for a in (*e.inputs, *e.outputs)}
    body.append(f"<details><summary>Artifacts ({len(artifacts)})</summary>")
    body.append(
        _table(
            ["id", "type", "uri"],
            [[str(a.id), _e(a.type), _path(a.uri)] for _, a in sorted(artifacts.items())],
            numeric=(0,),
        )
    )
    body.append("</details></section>")
    return "".join(body)


def _finished(execution: rd.ExecutionRef) -> str:
    """The end time; without the date when it is the start's."""
    started, finished = rd.iso_time(execution.started_ms), rd.iso_time(execution.finished_ms)
    return finished[11:] if started[:10] == finished[:10] else finished


def _artifact_ids(refs: Iterable[rd.ArtifactRef]) -> str:
    return ", ".join(f"{ref.key}:{ref.id}" for ref in refs)


# ----------------------------------------------------------------------- helpers


def _e(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _file_href(file_name: str) -> str:
    """A link to a file beside the page. Percent-encoded whole: with no `:` or `/`
    left, no scheme (`javascript:`) or other host can form, and `#`, `?` or `%` in
    the name still name the file."""
    return _e(urllib.parse.quote(file_name, safe=""))


def _path(text: str | None) -> str:
    return f'<span class="path">{_e(text)}</span>' if text else '<span class="muted">none</span>'


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Iterable[int] = ()
) -> str:
    """A table of plain-text `header` names and HTML cells; `numeric` columns align right."""
    numeric = set(numeric)

    def cell(tag: str, content: str, index: int) -> str:
        return (
            f'<{tag} class="num">{content}</{tag}>'
            if index in numeric
            else f"<{tag}>{content}</{tag}>"
        )

    head = "".join(cell("th", _e(name), i) for i, name in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", content, i) for i, content in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _key_values(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"
