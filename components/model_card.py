"""Model cards: one Markdown page per pushed model version.

A card says what the model is (backbone, input size, classes, version, date),
what it learned from, how well it did, why it was shipped, what it is for and
not for, and how to query it. `ModelCardFacts` holds what is known; fields left
empty print as "not recorded", so a caller with less at hand can still write a
card. `version_facts` is the one builder of what a card says about the model,
its evaluation and its gate: the Pusher calls it while it pushes and writes
`model_card.md` into the version; `transferline report` calls it with the same
inputs read back from ML Metadata and adds what it knows of the dataset, so the
two cards of one version agree.

Every value a card quotes (class names, paths, settings, metric and signature
names, versions, commands) may come from a folder or file name chosen by
someone else, so each is escaped for where it goes; the card's own words are
not. The scheme, for CommonMark and GitHub Markdown:

* Text (`_text`): `<`, `>` and `&` become entities, so no HTML tag or entity
  forms; `\\`, backticks, `*`, `#` and `~` are backslash-escaped, and `_`
  wherever it could start or end emphasis (not between two letters or digits,
  where it cannot); a `]` before `(` or `[` is escaped, so no link or image can
  close (the card never puts `(` or `[` right after a value, and a reference
  definition needs a line of its own, which no value starts).
* Code (`_code`): backslash escapes and entities do not work inside a code span
  (they show literally), and nothing in one is read as HTML or Markdown; so the
  value goes in as it is, between backtick fences longer than any run of
  backticks in it (padded with a space where it starts or ends with one).
* Commands in fenced blocks: every value is one shell word (`shlex.quote`;
  URL path segments percent-encoded first), and the fence is longer than any
  run of backticks in the block, so nothing in it can close the fence.
* Outside fenced blocks: a line break in a value becomes a space, so a value
  can neither end a table row or list item nor start a heading.
* Table cells (`_table`): every `|` becomes `\\|`. GFM splits a row only at
  pipes with no backslash directly before them and then removes exactly that
  one backslash, code spans included, so a cell keeps its content and a row its
  columns.

So `<` reaches the file raw only inside code spans and fenced blocks, where
every CommonMark renderer prints it as text.
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
import shlex
import time
import urllib.parse
from collections.abc import Mapping, Sequence

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from components.tfma_results import CHANGE, OVERALL, ClassScore, Evaluation, ThresholdCheck
from trainer import export
from trainer.config import recorded_input_size
from trainer.features import EVAL_SPLIT

CARD_PREFIX = "model_card_"
VERSION_CARD_FILE = "model_card.md"
"""The card inside a pushed version directory."""
NOT_RECORDED = "not recorded"
_SAVED_MODEL_PB = "saved_model.pb"

# Below this many eval images of a class, per-class figures are too rough to trust.
_FEW_EVAL_IMAGES_PER_CLASS = 30
# Largest / smallest class count above this is called out as imbalance.
_IMBALANCE_RATIO = 3.0


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """A SavedModel signature's inputs and outputs as `name: dtype shape` strings."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ModelCardFacts:
    """Everything a model card says about one pushed version.

    Attributes:
        model_name: Name under the serving directory (TF Serving's model name).
        version: The version directory's name.
        serving_path: The version directory.
        pushed_at: When the version was pushed (ISO 8601, UTC).
        backbone: Registry name of the pretrained network.
        weights: "imagenet", "none" or a weights file.
        input_size: Side of the square model input, pixels.
        classes: Class names in model-output order.
        model_uri: The Trainer's Model artifact the version was copied from.
        pipeline_run: The ML Metadata pipeline run that produced it.
        training_config: Every training setting, as recorded.
        fine_tuned_layers: Backbone layers trained by fine-tuning (none: frozen).
        data_source: The image folder (input_base).
        data_fingerprint: ImageFolderExampleGen's fingerprint of that folder.
        data_span: The ExampleGen span.
        examples_per_split: tf.Examples per split.
        images_per_class: Usable images per class, all splits.
        eval_images_per_class: Eval images per class.
        files_not_used: Files skipped or dropped as duplicates at ingestion.
        accuracy: Eval-split accuracy.
        metrics: Other overall eval metrics by name.
        per_class: Per-class eval figures.
        blessed: The Evaluator's decision; None if not recorded.
        gate_checks: The thresholds behind the decision (`components.tfma_results`).
        baseline_model: The model compared against (None: the first blessed model).
        signatures: The SavedModel's signatures.
    """

    model_name: str
    version: str
    serving_path: str = ""
    pushed_at: str = ""
    backbone: str = ""
    weights: str = ""
    input_size: int | None = None
    classes: tuple[str, ...] = ()
    model_uri: str = ""
    pipeline_run: str = ""
    training_config: Mapping[str, object] = dataclasses.field(default_factory=dict)
    fine_tuned_layers: tuple[str, ...] = ()
    data_source: str = ""
    data_fingerprint: str = ""
    data_span: int | None = None
    examples_per_split: Mapping[str, int] = dataclasses.field(default_factory=dict)
    images_per_class: Mapping[str, int] = dataclasses.field(default_factory=dict)
    eval_images_per_class: Mapping[str, int] = dataclasses.field(default_factory=dict)
    files_not_used: int | None = None
    accuracy: float | None = None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    per_class: tuple[ClassScore, ...] = ()
    blessed: bool | None = None
    gate_checks: tuple[ThresholdCheck, ...] = ()
    baseline_model: str | None = None
    signatures: tuple[SignatureInfo, ...] = ()

    def validate(self) -> ModelCardFacts:
        """Raises ValueError naming a missing or impossible fact; returns self."""
        if not self.model_name:
            raise ValueError("model card: model_name must not be empty")
        if not self.version or "/" in self.version or self.version in (".", ".."):
            raise ValueError(f"model card: version must be a directory name, got {self.version!r}")
        if self.input_size is not None and self.input_size < 1:
            raise ValueError(f"model card: input_size must be positive, got {self.input_size}")
        return self


def model_card_filename(version: str) -> str:
    """`model_card_<version>.md`."""
    return f"{CARD_PREFIX}{version}.md"


def write_model_card(facts: ModelCardFacts, directory: str, filename: str | None = None) -> str:
    """Writes `<directory>/model_card_<version>.md` (local path or object store).

    Args:
        facts: What the card says.
        directory: Where it goes.
        filename: Another file name (e.g. `VERSION_CARD_FILE`).

    Returns:
        The path written.

    Raises:
        ValueError: `facts` fails `ModelCardFacts.validate`.
    """
    text = render_model_card(facts.validate())
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, filename or model_card_filename(facts.version))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)
    return path


def render_model_card(facts: ModelCardFacts) -> str:
    """The card as Markdown."""
    sections = [
        f"# Model card: {_text(facts.model_name)}, version {_text(facts.version)}",
        _model_details(facts),
        _training_data(facts),
        _evaluation(facts),
        _gate(facts),
        _intended_use(facts),
        _limitations(facts),
        _how_to_query(facts),
    ]
    return "\n\n".join(section.rstrip() for section in sections) + "\n"


def version_facts(
    *,
    model_path: str,
    model_uri: str,
    serving_path: str,
    pushed_at: float | None,
    evaluation: Evaluation | None,
    blessed: bool | None,
    baseline_model: str | None,
    pipeline_run: str = "",
) -> ModelCardFacts:
    """What a card says of a pushed version: the model, its evaluation and its gate.

    Everything is read from the SavedModel (classes, training record,
    signatures) and the Evaluator's results, so every caller given the same
    version says the same; dataset facts are left for a caller that has them.

    Args:
        model_path: The SavedModel (an export of `trainer.export`).
        model_uri: The Trainer's Model artifact it came from.
        serving_path: The version directory, `<serving dir>/<model name>/<version>`.
        pushed_at: When it was pushed (seconds since the epoch), if known.
        evaluation: The Evaluator's results (`components.tfma_results`); None
            leaves the metrics and the gate "not recorded".
        blessed: The Evaluator's decision; None if not recorded.
        baseline_model: The model compared against (None: the first blessed model).
        pipeline_run: The pipeline run that pushed it.
    """
    try:
        classes = tuple(export.read_class_names(model_path))
    except FileNotFoundError:  # a SavedModel not exported by trainer.export
        classes = ()
    record = export.read_training_record(model_path)
    config = record.get("config") or {}
    history = record.get("history") or {}
    serving_path = serving_path.rstrip("/")
    facts = ModelCardFacts(
        model_name=os.path.basename(os.path.dirname(serving_path)),
        version=os.path.basename(serving_path),
        serving_path=serving_path,
        pushed_at=format_utc(pushed_at),
        backbone=str(config.get("backbone", "")),
        weights=str(config.get("weights", "")),
        input_size=recorded_input_size(config),
        classes=classes,
        model_uri=model_uri,
        pipeline_run=pipeline_run,
        training_config=config,
        fine_tuned_layers=tuple(history.get("unfrozen_layers") or ()),
        blessed=blessed,
        baseline_model=baseline_model or None,
        signatures=read_signatures(model_path),
    )
    return with_evaluation(facts, evaluation) if evaluation is not None else facts


def with_evaluation(facts: ModelCardFacts, evaluation: Evaluation) -> ModelCardFacts:
    """`facts` with the Evaluator's figures and gate checks."""
    per_class = evaluation.per_class
    return dataclasses.replace(
        facts,
        examples_per_split=(
            {EVAL_SPLIT: evaluation.examples} if evaluation.examples is not None else {}
        ),
        eval_images_per_class={score.name: score.support for score in per_class},
        accuracy=evaluation.accuracy,
        metrics=(
            {f"top_{evaluation.top_k.k}_accuracy": evaluation.top_k.value}
            if evaluation.top_k else {}
        ),
        per_class=per_class,
        gate_checks=evaluation.checks,
    )


def read_signatures(model_path: str) -> tuple[SignatureInfo, ...]:
    """The SavedModel's signatures, read from `saved_model.pb` without loading the model."""
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(model_path, _SAVED_MODEL_PB), "rb") as f:
        saved_model.ParseFromString(f.read())

    def describe(tensors: Mapping[str, object]) -> tuple[str, ...]:
        return tuple(
            f"{name}: {tf.as_dtype(info.dtype).name} "
            f"[{', '.join('None' if d.size < 0 else str(d.size) for d in info.tensor_shape.dim)}]"
            for name, info in sorted(tensors.items())
        )

    signatures = saved_model.meta_graphs[0].signature_def if saved_model.meta_graphs else {}
    return tuple(
        SignatureInfo(name, describe(signature.inputs), describe(signature.outputs))
        for name, signature in sorted(signatures.items())
        if not name.startswith("__")  # e.g. __saved_model_init_op
    )


def format_utc(seconds: float | None) -> str:
    """`2026-11-23 15:09:42 UTC` for seconds since the epoch; '' for None."""
    if not seconds:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


# ------------------------------------------------------------------------ sections


def _model_details(facts: ModelCardFacts) -> str:
    size = f"{facts.input_size} x {facts.input_size} RGB" if facts.input_size else NOT_RECORDED
    backbone_state = (
        f"top {len(facts.fine_tuned_layers)} layers fine-tuned"
        if facts.fine_tuned_layers
        else "frozen"
    )
    rows = [
        ("Model name", _text(facts.model_name)),
        ("Version", _text(facts.version)),
        ("Pushed", _text(facts.pushed_at)),
        ("Serving directory", _code(facts.serving_path)),
        (
            "Architecture",
            f"{_text(_or_unknown(facts.backbone))} backbone ({backbone_state}) + new head",
        ),
        ("Backbone weights", _text(facts.weights)),
        ("Input size", size),
        ("Classes", f"{len(facts.classes)}: {_texts(facts.classes)}" if facts.classes else ""),
        ("Source model artifact", _code(facts.model_uri)),
        ("Pipeline run", _text(facts.pipeline_run)),
    ]
    text = "## Model details\n\n" + _table(("", ""), rows)
    if facts.training_config:
        flat = flatten_settings(facts.training_config)
        settings = ", ".join(_code(f"{key}={value}") for key, value in sorted(flat.items()))
        text += f"\n\nTraining settings: {settings}."
    return text


def _training_data(facts: ModelCardFacts) -> str:
    lines = ["## Training data", ""]
    lines.append(f"- Source folder: {_code(facts.data_source) or NOT_RECORDED}")
    lines.append(f"- Fingerprint: {_code(facts.data_fingerprint) or NOT_RECORDED}")
    lines.append(f"- Span: {facts.data_span if facts.data_span is not None else NOT_RECORDED}")
    if facts.examples_per_split:
        splits = ", ".join(
            f"{_text(split)} {n}" for split, n in sorted(facts.examples_per_split.items())
        )
        lines.append(f"- Images per split: {splits}")
    if facts.files_not_used is not None:
        lines.append(f"- Files not used (skipped or duplicate): {facts.files_not_used}")
    text = "\n".join(lines)
    if facts.images_per_class:
        eval_default = 0 if facts.eval_images_per_class else ""
        rows = [
            (
                _text(name),
                facts.images_per_class.get(name, 0),
                facts.eval_images_per_class.get(name, eval_default),
            )
            for name in _class_order(facts)
        ]
        text += "\n\n" + _table(("class", "images", "of which eval"), rows)
    return text


def _evaluation(facts: ModelCardFacts) -> str:
    lines = ["## Evaluation", ""]
    lines.append(f"Eval-split accuracy: **{_number(facts.accuracy)}**.")
    others = {name: value for name, value in facts.metrics.items() if value is not None}
    if others:
        lines.append("")
        lines.append(
            _table(
                ("metric", "value"), [(_text(k), _number(v)) for k, v in sorted(others.items())]
            )
        )
    if facts.per_class:
        lines.append("")
        lines.append(
            _table(
                ("class", "eval images", "precision", "recall"),
                [
                    (_text(c.name), c.support, _number(c.precision), _number(c.recall))
                    for c in facts.per_class
                ],
            )
        )
    return "\n".join(lines)


def _gate(facts: ModelCardFacts) -> str:
    decision = {True: "**blessed**", False: "**not blessed**", None: NOT_RECORDED}[facts.blessed]
    baseline = (
        f"against the model being served, scored from {_code(facts.baseline_model)}"
        if facts.baseline_model
        else "with no model being served to compare against"
    )
    text = f"## Gate decision\n\nThe Evaluator's decision: {decision}, {baseline}."
    if facts.gate_checks:
        rows = [
            (_check_name(c), _check_requirement(c), _number(c.value), _number(c.baseline),
             _text(c.outcome))
            for c in facts.gate_checks
        ]
        text += "\n\n" + _table(("metric", "requirement", "value", "baseline", "outcome"), rows)
    return text


def _check_name(check: ThresholdCheck) -> str:
    where = "" if check.slice == OVERALL else f", {_text(check.slice)}"
    return f"{_text(check.metric)} ({check.threshold_type}{where})"


def _check_requirement(check: ThresholdCheck) -> str:
    """The bound in words; a change bound relative to the baseline's value.

    The card's own words around numbers (`ThresholdCheck.requirement`'s too), so
    written as they are: nothing in them is quoted from elsewhere.
    """
    if check.threshold_type != CHANGE:
        return check.requirement
    text = f">= baseline - {check.max_drop:g}"
    return f"{text} (>= {check.threshold:.4f})" if check.threshold is not None else text


def _intended_use(facts: ModelCardFacts) -> str:
    classes = _texts(facts.classes) if facts.classes else "the classes it was trained on"
    return (
        "## Intended use\n\n"
        f"Sorting images like those in the training folder into one of: {classes}. "
        "Best used where a wrong label is cheap or a person reviews low-score predictions; "
        "the per-class figures above say which classes need that review most."
    )


def _limitations(facts: ModelCardFacts) -> str:
    notes = [
        "Closed set: every image gets one of the classes above, even an image of something "
        "else entirely, often with a high score. There is no 'none of these' answer.",
        "Scores are softmax outputs, not calibrated probabilities.",
        "Images unlike the training folder (other cameras, lighting, framing, resolution) "
        "may do worse than the figures here.",
    ]
    if facts.input_size:
        notes.append(
            f"Every image is resized to {facts.input_size} x {facts.input_size}; "
            "detail smaller than that scale is lost."
        )
    if facts.weights == "none":
        notes.append(
            "Trained from random initialisation (`weights=none`): for tests and demos, "
            "not for real use."
        )
    if facts.eval_images_per_class:
        eval_counts = {
            name: facts.eval_images_per_class.get(name, 0) for name in _class_order(facts)
        }
        unevaluated = [name for name, n in eval_counts.items() if n == 0]
        fewest = min((n for n in eval_counts.values() if n > 0), default=0)
        if unevaluated:
            notes.append(f"Not evaluated at all (no eval images): {_texts(unevaluated)}.")
        if 0 < fewest < _FEW_EVAL_IMAGES_PER_CLASS:
            notes.append(
                f"Small evaluation set (as few as {fewest} eval images in a class): one image "
                f"more or less right moves that class's recall by {100 / fewest:.0f} points or "
                "more; treat the per-class figures as rough."
            )
    counts = [n for n in facts.images_per_class.values() if n > 0]
    if counts and max(counts) / min(counts) > _IMBALANCE_RATIO:
        notes.append(
            f"Imbalanced classes ({min(counts)} to {max(counts)} images): the model leans "
            "towards the larger classes."
        )
    weak = [c.name for c in facts.per_class if c.recall is not None and c.recall < 0.5]
    if weak:
        notes.append(f"Recall below 0.5 on: {_texts(weak)}.")
    return "## Limitations\n\n" + "\n".join(f"- {note}" for note in notes)


def _how_to_query(facts: ModelCardFacts) -> str:
    model_dir = (
        os.path.dirname(facts.serving_path.rstrip("/")) if facts.serving_path else "SERVING_DIR"
    )
    name = facts.model_name
    url = (
        f"http://localhost:8501/v1/models/{_url_segment(name)}"
        f"/versions/{_url_segment(facts.version)}:predict"
    )
    serve = _shell_block(
        "docker run -p 8501:8501"
        f" -v {shlex.quote(f'{model_dir}:/models/{name}')}"
        f" -e {shlex.quote(f'MODEL_NAME={name}')} tensorflow/serving\n"
        """curl -s -d '{"instances": [{"b64": "'"$(base64 -w0 image.jpg)"'"}]}' \\\n"""
        f"    {shlex.quote(url)}"
    )
    predict = _shell_block(
        f"transferline predict --model {shlex.quote(facts.serving_path or model_dir)} image.jpg"
    )
    text = (
        "## How to query\n\n"
        f"With TF Serving (REST), serving the model directory:\n\n{serve}\n\n"
        f"From the command line, without a server:\n\n{predict}"
    )
    if facts.signatures:
        rows = [
            (_code(s.name), "<br>".join(map(_text, s.inputs)), "<br>".join(map(_text, s.outputs)))
            for s in facts.signatures
        ]
        text += "\n\nSignatures:\n\n" + _table(("signature", "inputs", "outputs"), rows)
    return text


# ------------------------------------------------------------------------- helpers


def flatten_settings(values: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Nested settings as one level of dotted names: {"head": {"dropout": 0.2}} ->
    {"head.dropout": 0.2}."""
    flat: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _class_order(facts: ModelCardFacts) -> list[str]:
    extra = sorted(set(facts.images_per_class) - set(facts.classes))
    return [*facts.classes, *extra]


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GFM table of Markdown cells (values already through `_text` or `_code`)."""

    def cell(value: object) -> str:
        text = NOT_RECORDED if value is None or value == "" else str(value)
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


_LINE_BREAKS = re.compile(r"\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")
_BACKSLASHED = re.compile(r"[\\`*#~]|\](?=[(\[])|(?<![^\W_])_|_(?![^\W_])")


def _text(value: object) -> str:
    """A quoted value as Markdown text that shows it as it is and forms nothing
    (the module docstring has the scheme)."""
    text = _LINE_BREAKS.sub(" ", "" if value is None else str(value))
    text = html.escape(text, quote=False)  # `&`, `<` and `>` as entities
    return _BACKSLASHED.sub(lambda m: "\\" + m.group(), text)


def _texts(values: Sequence[str]) -> str:
    return ", ".join(map(_text, values))


def _code(value: str | None) -> str:
    """A quoted value as a code span; '' for none."""
    if not value:
        return ""
    text = _LINE_BREAKS.sub(" ", value)
    fence = "`" * (_longest_backtick_run(text) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _shell_block(commands: str) -> str:
    """`commands` (values already `shlex.quote`d) as a fenced bash block."""
    fence = "`" * max(3, _longest_backtick_run(commands) + 1)
    return f"{fence}bash\n{commands}\n{fence}"


def _longest_backtick_run(text: str) -> int:
    return max(map(len, re.findall("`+", text)), default=0)


def _url_segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _or_unknown(text: str) -> str:
    return text or NOT_RECORDED
