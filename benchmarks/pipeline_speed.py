"""Whole-pipeline speed and memory against one forward pass of the backbone, on Fashion-MNIST.

Data: Debian's `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist):
the first N official training images written as a folder of PNGs, one
subfolder per class (the pipeline splits it by content hash), and the official
10 000 test images for accuracy. EfficientNet-Lite0 with its real ImageNet
weights, 96 px, 10 epochs. For each N, in one run on one machine:

* floor: one forward pass of the backbone in TensorFlow over the N images,
  preprocessed tensors already in memory, one traced function per batch, after a
  warm-up (`train_speed.measure_floor`); measured before and after the runs, the
  faster one counts (a shared machine's speed drifts).
* ours: `transferline run` in a subprocess on a fresh workdir: wall time of the
  process, the pipeline's own time, each step's time (its `X finished in Ns`
  lines, by node id, so new nodes show up unchanged) and the peak RSS of its
  process tree (sampled with psutil). Test accuracy through the pushed model's
  `serving_default` on the test PNG bytes.
* re-run: the same workdir, only the head's dropout changed (a config file's
  `training.head.dropout`): the pipeline's time and each step's.
* plain Keras: a script in a subprocess on the same folder:
  `tf.keras.utils.image_dataset_from_directory` (80/20 split), the frozen
  backbone with the same weights, `fit` with early stopping (best weights
  restored), a SavedModel; its process wall time and test accuracy.
* Embedder: when the pipeline has an `Embedder` node, its step time in the
  DirectRunner's in-memory mode (the run above) and in 2-worker multi-processing
  mode (a fresh run with those Beam arguments).

Targets (issue 14): the first run <= 2.0x the floor at 20 000 images; the
re-run's pipeline <= 15 s; >= 4x faster than plain Keras at equal or better test
accuracy; peak RSS <= 2 GB at 5 000 images and flat as N grows 4x.

    .venv/bin/python benchmarks/pipeline_speed.py [--sizes 5000,20000 | --train N]
        [--epochs 10] [--test 10000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", category=FutureWarning)  # google-cloud's Python 3.10 notices
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import tensorflow as tf  # noqa: E402
from ingest import PeakRss  # noqa: E402
from train_speed import (  # noqa: E402
    BACKBONE,
    IMAGE_SIZE,
    in_memory,
    load_fashion_mnist,
    measure_floor,
    png,
    served_accuracy,
)

from trainer import backbones  # noqa: E402
from trainer.config import HeadConfig, TrainingConfig  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
EMBEDDER = "Embedder"
"""The node id of the embeddings step; its rows are printed only when a run has it."""
MULTI_PROCESSING_BEAM_ARGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
STEP_LINE = re.compile(r"^\[[\d:]+\] (\S+) (?:finished in|failed after) ([\d.]+)s")
PIPELINE_LINE = re.compile(r"^Pipeline finished in ([\d.]+)s")
NOISE = re.compile(r"cuda_(fft|dnn|blas)|FutureWarning|warnings\.warn|InitializeLog|^W0000|"
                   r"XNNPACK delegate|gcs_utils")
"""Library start-up lines not echoed (the whole output is kept and shown on failure)."""
GB = 1e9

FLOOR_RATIO_TARGET = 2.0
RERUN_SECONDS_TARGET = 15.0
KERAS_SPEEDUP_TARGET = 4.0
PEAK_RSS_TARGET_GB = 2.0
FLAT_RSS_GROWTH_TARGET = 1.25  # "flat": peak RSS grows at most this much when N grows 4x


@dataclasses.dataclass
class Run:
    """One subprocess: wall time, peak RSS of its tree, its output and what it reported."""

    wall: float
    peak_rss: int
    output: str
    steps: dict[str, float]
    pipeline_seconds: float | None


# ------------------------------------------------------------------ the machine


def cpu_description() -> str:
    """`lscpu`'s model name and flags (or /proc/cpuinfo's where lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = pathlib.Path("/proc/cpuinfo").read_text()
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name", "unknown")
    return f"CPU: {model}, {os.cpu_count()} CPUs\nflags: {fields.get('flags', 'unknown')}"


# --------------------------------------------------------------------- the data


def write_folder(root: pathlib.Path, images: np.ndarray, labels: np.ndarray) -> None:
    """One PNG per image under root/<class>/."""
    for n, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{n:06d}.png").write_bytes(png(image))


def floor_seconds(images: np.ndarray) -> float:
    """One forward pass of the frozen backbone over `images` (train_speed's floor)."""
    base = backbones.build_frozen_base(BACKBONE, IMAGE_SIZE, "imagenet")
    seconds = measure_floor(base, in_memory(images))
    tf.keras.backend.clear_session()
    return seconds


# ------------------------------------------------------------------ subprocesses


def measure(command: list[str]) -> Run:
    """Runs `command`, printing its lines as they come; samples its process tree's RSS."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, (str(REPO), os.environ.get("PYTHONPATH")))))
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, cwd=REPO, env=env)
    lines = []
    with PeakRss(child.pid) as peak:
        for line in child.stdout:
            lines.append(line)
            if not NOISE.search(line):
                print(f"    | {line}", end="", flush=True)
        child.wait()
    wall = time.monotonic() - started
    output = "".join(lines)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {child.returncode}:\n"
                           f"{output[-3000:]}")
    steps = {m[1]: float(m[2]) for m in map(STEP_LINE.match, lines) if m}
    pipeline = next((float(m[1]) for m in map(PIPELINE_LINE.match, lines) if m), None)
    return Run(wall, peak.rss, output, steps, pipeline)


def transferline_run(data: pathlib.Path, workdir: pathlib.Path, epochs: int, dropout: float,
                     beam_args: tuple[str, ...] = ()) -> Run:
    """`transferline run` as a user types it, the head's dropout in a config file."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir.parent / f"{workdir.name}-dropout-{dropout}.yaml"
    config.write_text(f"training:\n  head:\n    dropout: {dropout}\n")
    command = [sys.executable, "-m", "pipeline.cli", "run", "--data", str(data),
               "--workdir", str(workdir), "--config", str(config),
               "--backbone", BACKBONE, "--weights", "imagenet",
               "--epochs", str(epochs), "--image-size", str(IMAGE_SIZE),
               "--min-accuracy", "0",  # push the first run's model whatever its accuracy
               *(f"--beam-arg={arg}" for arg in beam_args)]
    return measure(command)


def pushed_model(workdir: pathlib.Path) -> str:
    summary = json.loads((workdir / "run_summary.json").read_text())
    if not summary.get("pushed_model"):
        raise RuntimeError(f"{workdir}: the run pushed no model (blessed: {summary['blessed']})")
    return summary["pushed_model"]


def plain_keras(data: pathlib.Path, output: pathlib.Path, epochs: int) -> Run:
    """The plain Keras script (`--child keras`) in its own process."""
    command = [sys.executable, os.path.abspath(__file__), "--child", "keras",
               "--folder", str(data), "--output", str(output), "--epochs", str(epochs)]
    return measure(command)


def keras_child(folder: str, output: str, epochs: int) -> None:
    """A plain transfer-learning script: datasets, frozen backbone, fit, SavedModel."""
    defaults = TrainingConfig()
    train, validation = tf.keras.utils.image_dataset_from_directory(
        folder, validation_split=0.2, subset="both", seed=0, image_size=(IMAGE_SIZE, IMAGE_SIZE),
        batch_size=defaults.batch_size, color_mode="rgb")
    n_classes = len(train.class_names)
    preprocess = backbones.get_backbone(BACKBONE).preprocess
    train, validation = (ds.map(lambda x, y: (preprocess(x), y)).prefetch(tf.data.AUTOTUNE)
                         for ds in (train, validation))
    tf.keras.utils.set_random_seed(0)
    base = backbones.build_frozen_base(BACKBONE, IMAGE_SIZE, "imagenet")
    inputs = tf.keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    x = tf.keras.layers.Dropout(HeadConfig().dropout)(x)
    keras_model = tf.keras.Model(inputs, tf.keras.layers.Dense(n_classes, "softmax")(x))
    keras_model.compile(tf.keras.optimizers.Adam(defaults.learning_rate),
                        "sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = tf.keras.callbacks.EarlyStopping(
        patience=defaults.early_stopping_patience, restore_best_weights=True)
    keras_model.fit(train, validation_data=validation, epochs=epochs, callbacks=[stop], verbose=2)
    keras_model.save(output)


def keras_accuracy(saved_model: pathlib.Path, folder: pathlib.Path, test_images: np.ndarray,
                   test_labels: np.ndarray) -> float:
    """Test accuracy of the plain script's SavedModel (its classes: the sorted folder names)."""
    classes = np.array(sorted(os.listdir(folder)))
    loaded = tf.keras.models.load_model(str(saved_model))
    scores = loaded.predict(in_memory(test_images), batch_size=256, verbose=0)
    tf.keras.backend.clear_session()
    return float(np.mean(classes[scores.argmax(axis=1)] == test_labels))


# ------------------------------------------------------------------- one size


def _steps(run: Run) -> str:
    return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in
                     sorted(run.steps.items(), key=lambda item: -item[1]))


def _pipeline(run: Run, floor: float | None = None) -> str:
    if run.pipeline_seconds is None:
        return "n/a"
    ratio = "" if floor is None else f" ({run.pipeline_seconds / floor:.2f}x the floor)"
    return f"{run.pipeline_seconds:.0f}s{ratio}"


def run_size(n: int, root: pathlib.Path, epochs: int,
             test: tuple[np.ndarray, np.ndarray]) -> dict:
    (images, labels), _, _ = load_fashion_mnist(n, 0, 0)
    data, work, multi_work, keras_dir = (root / f"{kind}-{n}" for kind in (
        "fashion", "work", "work-multi", "keras"))
    for folder in (data, work, multi_work, keras_dir):  # a first run starts from nothing
        shutil.rmtree(folder, ignore_errors=True)
    started = time.monotonic()
    write_folder(data, images, labels)
    print(f"\n== {n} training images ({len(set(labels))} classes) as PNGs in {data}, written "
          f"in {time.monotonic() - started:.0f}s", flush=True)
    test_encoded = [png(image) for image in test[0]]

    floor_before = floor_seconds(images)
    print(f"floor (one forward pass over the {n} images, in memory, warm): "
          f"{floor_before:.1f}s", flush=True)

    dropout = HeadConfig().dropout
    print(f"\nours, first run (fresh workdir, dropout {dropout}):", flush=True)
    first = transferline_run(data, work, epochs, dropout)
    accuracy = served_accuracy(pushed_model(work), test_encoded, test[1])

    changed = round(dropout + 0.1, 2)
    print(f"\nours, re-run with only the head's dropout changed ({dropout} -> {changed}):",
          flush=True)
    rerun = transferline_run(data, work, epochs, changed)

    print("\nplain Keras script on the same folder:", flush=True)
    keras = plain_keras(data, keras_dir, epochs)
    keras_acc = keras_accuracy(keras_dir, data, *test)

    multi = None
    if EMBEDDER in first.steps:
        print(f"\nours, first run with Beam {' '.join(MULTI_PROCESSING_BEAM_ARGS)}:", flush=True)
        multi = transferline_run(data, multi_work, epochs, dropout, MULTI_PROCESSING_BEAM_ARGS)

    floor_after = floor_seconds(images)
    floor = min(floor_before, floor_after)
    print(f"\nfloor at the end: {floor_after:.1f}s (the faster, {floor:.1f}s, counts)")
    print(f"\nresults at {n} images")
    print(f"  first run: {first.wall:.1f}s wall ({first.wall / floor:.2f}x the floor), "
          f"pipeline {_pipeline(first, floor)}, peak RSS {first.peak_rss / GB:.2f} GB, "
          f"test accuracy {accuracy:.4f}")
    print(f"    steps: {_steps(first)}")
    print(f"  re-run (dropout only): {rerun.wall:.1f}s wall, pipeline {_pipeline(rerun)}, "
          f"peak RSS {rerun.peak_rss / GB:.2f} GB")
    print(f"    steps: {_steps(rerun)}")
    print(f"  plain Keras: {keras.wall:.1f}s wall, peak RSS {keras.peak_rss / GB:.2f} GB, "
          f"test accuracy {keras_acc:.4f}; ours {keras.wall / first.wall:.2f}x faster")
    if multi is None:
        print(f"  no {EMBEDDER} node in this pipeline: its Beam modes not measured")
    else:
        print(f"  {EMBEDDER}: in-memory {first.steps[EMBEDDER]:.1f}s, 2-worker multi-processing "
              f"{multi.steps.get(EMBEDDER, float('nan')):.1f}s (that run: {multi.wall:.1f}s "
              f"wall, peak RSS {multi.peak_rss / GB:.2f} GB)")
        print(f"    steps: {_steps(multi)}")
    shutil.rmtree(data, ignore_errors=True)
    return {"n": n, "floor": floor, "first": first, "rerun": rerun, "accuracy": accuracy,
            "keras": keras, "keras_accuracy": keras_acc, "multi": multi}


# ----------------------------------------------------------------- the table


def _verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


def table_rows(results: list[dict]) -> list[tuple[str, str, str]]:
    """(figure, target, met/not met) for every target, from the measured results."""
    rows = []
    for r in results:
        n, first, rerun = r["n"], r["first"], r["rerun"]
        ratio = first.wall / r["floor"]
        rows.append((f"first run / floor at {n}: {ratio:.2f}x",
                     f"<= {FLOOR_RATIO_TARGET}x (stated at 20000)",
                     _verdict(ratio <= FLOOR_RATIO_TARGET)))
        rerun_seconds = rerun.pipeline_seconds if rerun.pipeline_seconds is not None else rerun.wall
        rows.append((f"dropout re-run, pipeline at {n}: {rerun_seconds:.0f}s",
                     f"<= {RERUN_SECONDS_TARGET:.0f}s",
                     _verdict(rerun_seconds <= RERUN_SECONDS_TARGET)))
        speedup = r["keras"].wall / first.wall
        rows.append((f"vs plain Keras at {n}: {speedup:.2f}x faster",
                     f">= {KERAS_SPEEDUP_TARGET:.0f}x", _verdict(speedup >= KERAS_SPEEDUP_TARGET)))
        rows.append((f"test accuracy at {n}: {r['accuracy']:.4f} "
                     f"vs Keras {r['keras_accuracy']:.4f}",
                     ">= Keras'", _verdict(r["accuracy"] >= r["keras_accuracy"])))
        rows.append((f"peak RSS at {n}: {first.peak_rss / GB:.2f} GB",
                     f"<= {PEAK_RSS_TARGET_GB:.0f} GB (stated at 5000)",
                     _verdict(first.peak_rss <= PEAK_RSS_TARGET_GB * GB)))
        if r["multi"] is not None:
            rows.append((f"{EMBEDDER} at {n}: in-memory {first.steps[EMBEDDER]:.1f}s, 2-worker "
                         f"multi-processing {r['multi'].steps.get(EMBEDDER, float('nan')):.1f}s",
                         "(reported)", ""))
    if len(results) > 1:
        small, large = results[0], results[-1]
        growth = large["first"].peak_rss / small["first"].peak_rss
        rows.append((f"peak RSS {large['n']} / {small['n']} images: {growth:.2f}x",
                     f"<= {FLAT_RSS_GROWTH_TARGET}x (flat)",
                     _verdict(growth <= FLAT_RSS_GROWTH_TARGET)))
    return rows


def print_table(results: list[dict]) -> None:
    rows = [("figure", "target", "verdict")] + table_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    print("\nsummary")
    for figure, target, verdict in rows:
        print(f"  {figure:<{widths[0]}}  {target:<{widths[1]}}  {verdict}")


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"--sizes: positive image counts, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--sizes", type=_sizes, default=[5_000, 20_000],
                       help="training image counts, comma-separated (default 5000,20000)")
    sizes.add_argument("--train", type=int, help="one training image count")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--test", type=int, default=10_000, help="official test images used")
    parser.add_argument("--workdir", help="default: a temporary folder, removed afterwards")
    parser.add_argument("--child", choices=("keras",), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        keras_child(args.folder, args.output, args.epochs)
        return
    print(cpu_description())
    print(f"machine: {psutil.virtual_memory().total / GB:.1f} GB RAM, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; TF {tf.__version__}")
    print(f"data: Fashion-MNIST PNG folders, {BACKBONE} ImageNet weights, {IMAGE_SIZE} px, "
          f"{args.epochs} epochs, {args.test} official test images")
    _, _, test = load_fashion_mnist(0, 0, args.test)
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="pipeline_speed_"))
    try:
        results = [run_size(n, root, args.epochs, test)
                   for n in ([args.train] if args.train else args.sizes)]
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print_table(results)


if __name__ == "__main__":
    main()
