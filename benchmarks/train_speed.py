"""Trainer speed and accuracy against the seeds' way, on Fashion-MNIST.

Data: Debian's `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist):
the first 10 000 official training images to train on, the next 1 000 to
validate on (early stopping, best epoch), the official 10 000 test images to
report accuracy on. EfficientNet-Lite0 with its real ImageNet weights, 96 px,
10 epochs, frozen backbone, no augmentation. In one run on one machine:

* ours: the Trainer's `run_fn` path on tf.Examples (PNG bytes) with a real
  Transform graph: decode, resize, cache the backbone's features once, train the
  head, export the SavedModel. Timed from start to exported model.
* seeds: the usual notebook: images decoded and resized in memory beforehand (not
  timed), a Keras model of the frozen backbone and the same head, `fit` for 10
  epochs with the validation set, the backbone running on every batch. Timed: `fit`.
* floor: one forward pass of the backbone in TensorFlow over the (in-memory,
  preprocessed) training images, already tensors, after a warm-up: the least
  a frozen-backbone training in TensorFlow can do.
  Measured twice, between the two runs of ours and again at the end (a shared
  machine's speed drifts); ours is judged against the faster of the two.
* engine floor: the same forward pass on the engine ours caches features with
  (`trainer.feature_engine`: TFLite's XNNPACK kernels on a CPU-only machine),
  conversion not counted. Ours over it is the Trainer's own overhead: the
  conversion, decoding, the validation images, the head's training, the export.
  Ours runs first as a fresh Trainer process would (the first Keras model and
  graphs of the process), then again warm, like the floor; both are printed.
* ours + fine-tuning: the same, then a fine-tuning phase (top layers, lower rate).

Targets (issue 4): ours >= 5x faster than the seeds; ours <= 1.3x the floor;
test accuracy no worse than the seeds', >= 85% frozen, >= 90% after fine-tuning.

    .venv/bin/python benchmarks/train_speed.py [--train 10000] [--epochs 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import pathlib
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline import demo_data  # noqa: E402
from trainer import (  # noqa: E402
    backbones,
    export,
    feature_engine,
    features,
    local_inputs,
    model,
    phases,
)
from trainer.config import (  # noqa: E402
    FEATURE_ENGINE_AUTO,
    FineTuningConfig,
    HeadConfig,
    TrainingConfig,
)

FASHION_DIRS = demo_data.FASHION_MNIST_DIRS
IMAGE_SIZE = 96
BACKBONE = "efficientnet_lite0"
BATCH_SIZE = 32
LEARNING_RATE = 1e-3


def load_fashion_mnist(n_train: int, n_validation: int, n_test: int):
    """(train, validation, test) as (uint8 images [n, 28, 28], class names) each."""
    paths = next(filter(None, (demo_data.find_fashion_mnist(d) for d in FASHION_DIRS)), None)
    if paths is None:
        sys.exit("Fashion-MNIST not found: apt-get install dataset-fashion-mnist")
    images, labels = (demo_data._read_idx(paths[f"train_{kind}"]) for kind in ("images", "labels"))
    test_images, test_labels = (demo_data._read_idx(paths[f"test_{kind}"])
                                for kind in ("images", "labels"))
    names = np.array(demo_data.FASHION_MNIST_CLASSES)
    end = n_train + n_validation
    return ((images[:n_train], names[labels[:n_train]]),
            (images[n_train:end], names[labels[n_train:end]]),
            (test_images[:n_test], names[test_labels[:n_test]]))


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def in_memory(images: np.ndarray) -> np.ndarray:
    """What the seed notebooks do up front: gray -> RGB, resize, the backbone's scaling."""
    out = []
    for start in range(0, len(images), 1000):
        batch = tf.image.grayscale_to_rgb(tf.constant(images[start:start + 1000, ..., None]))
        pixels = tf.image.resize(tf.cast(batch, tf.float32), [IMAGE_SIZE, IMAGE_SIZE])
        out.append(backbones.get_backbone(BACKBONE).preprocess(pixels).numpy())
    return np.concatenate(out)


def served_accuracy(export_dir: str, encoded: list[bytes], labels: np.ndarray) -> float:
    loaded = tf.saved_model.load(export_dir)
    serve = loaded.signatures[export.SERVING_DEFAULT]
    predicted = []
    for start in range(0, len(encoded), 500):
        out = serve(**{export.IMAGE_BYTES_INPUT: tf.constant(encoded[start:start + 500])})
        predicted.extend(label.decode() for label in out[export.LABEL_OUTPUT].numpy())
    return float(np.mean(np.array(predicted) == labels))


def run_ours(config, examples, transform_dir, workdir, test_encoded, test_labels):
    fn_args = local_inputs.make_fn_args(examples, transform_dir, config, workdir)
    started = time.perf_counter()
    history = model.train_and_export(fn_args)
    seconds = time.perf_counter() - started
    return seconds, served_accuracy(fn_args.serving_model_dir, test_encoded, test_labels), history


def measure_floor(base: tf.keras.Model, x_train: np.ndarray) -> float:
    """Seconds of one forward pass of `base` over `x_train`, after a warm-up.

    The least overhead there is: batches already tensors in memory, one traced
    graph called per batch (Keras `predict` on the NumPy array is slower).
    """
    size = phases.FEATURE_BATCH_SIZE
    batches = [tf.constant(x_train[start:start + size]) for start in range(0, len(x_train), size)]
    forward = tf.function(lambda batch: base(batch, training=False))
    for batch in {tuple(b.shape): b for b in batches}.values():  # trace every batch shape
        forward(batch).numpy()
    started = time.perf_counter()
    for batch in batches:
        forward(batch).numpy()
    return time.perf_counter() - started


def measure_engine_floor(base: tf.keras.Model, x_train: np.ndarray) -> float | None:
    """Seconds of one forward pass of `base` over `x_train` on TFLite; None where
    the Trainer would not use TFLite (a GPU, several replicas)."""
    if not feature_engine.tflite_applies(FEATURE_ENGINE_AUTO):
        return None
    engine = feature_engine.TFLiteModel(base)
    size = phases.FEATURE_BATCH_SIZE
    batches = [x_train[start:start + size] for start in range(0, len(x_train), size)]
    for batch in {b.shape: b for b in batches}.values():
        engine(batch)
    started = time.perf_counter()
    for batch in batches:
        engine(batch)
    return time.perf_counter() - started


def run_seeds(train, validation, test, class_names, epochs):
    x_train, x_val, x_test = (in_memory(images) for images, _ in (train, validation, test))
    index = {name: i for i, name in enumerate(class_names)}
    y_train, y_val, y_test = (np.array([index[n] for n in names]) for _, names in (
        train, validation, test))
    tf.keras.utils.set_random_seed(0)
    base = backbones.build_frozen_base(BACKBONE, IMAGE_SIZE, "imagenet")
    floor = measure_floor(base, x_train)

    inputs = tf.keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    x = tf.keras.layers.Dropout(0.2)(x)
    seeds = tf.keras.Model(inputs, tf.keras.layers.Dense(len(class_names), "softmax")(x))
    seeds.compile(tf.keras.optimizers.Adam(LEARNING_RATE), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    started = time.perf_counter()
    seeds.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs,
              validation_data=(x_val, y_val), verbose=2)
    seconds = time.perf_counter() - started
    accuracy = seeds.evaluate(x_test, y_test, batch_size=256, verbose=0)[1]
    return seconds, float(accuracy), floor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--validation", type=int, default=1_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--fine-tune-layers", type=int, default=120)
    parser.add_argument("--fine-tune-epochs", type=int, default=8)
    parser.add_argument("--fine-tune-learning-rate", type=float, default=1e-4)
    parser.add_argument("--skip-seeds", action="store_true")
    parser.add_argument("--skip-fine-tuning", action="store_true")
    args = parser.parse_args(argv)

    train, validation, test = load_fashion_mnist(args.train, args.validation, args.test)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}, TF {tf.__version__}")
    print(f"data: Fashion-MNIST, {len(train[0])} train, {len(validation[0])} validation, "
          f"{len(test[0])} test images; {BACKBONE} ImageNet weights, {IMAGE_SIZE} px, "
          f"{args.epochs} epochs, batch {BATCH_SIZE}, frozen, no augmentation")

    root = pathlib.Path(tempfile.mkdtemp(prefix="train_speed_"))
    rows = {split: [(png(image), str(name)) for image, name in zip(*data, strict=True)]
            for split, data in ((features.TRAIN_SPLIT, train), (features.EVAL_SPLIT, validation))}
    examples = local_inputs.write_examples(root / "examples", rows)
    config = TrainingConfig(
        backbone=BACKBONE, weights="imagenet", image_size=IMAGE_SIZE, epochs=args.epochs,
        batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE, head=HeadConfig(dropout=0.2),
        early_stopping_patience=args.epochs,  # run every epoch, as the seeds do
    )
    transform_dir = local_inputs.write_transform_output(
        root / "transform", config, rows[features.TRAIN_SPLIT], root / "tft_tmp")
    test_encoded = [png(image) for image in test[0]]
    class_names = export.class_names(tft.TFTransformOutput(transform_dir))

    # Ours twice: first as a fresh Trainer process runs it (the first Keras model,
    # graph and tf.data pipeline of the process), then warm, like the floor.
    cold, _, _ = run_ours(config, examples, transform_dir, root / "cold", test_encoded, test[1])
    base, x_train = backbones.build_frozen_base(BACKBONE, IMAGE_SIZE, "imagenet"), in_memory(
        train[0])
    floor_before = measure_floor(base, x_train)
    print(f"floor (one forward pass of the backbone in TensorFlow over the {len(train[0])} "
          f"training images, warm): {floor_before:.1f} s")
    engine_floor = measure_engine_floor(base, x_train)
    if engine_floor is not None:
        print(f"engine floor (the same pass on TFLite XNNPACK, as ours caches features "
              f"here; conversion not counted): {engine_floor:.1f} s")
    del base, x_train
    ours, ours_accuracy, history = run_ours(
        config, examples, transform_dir, root / "ours", test_encoded, test[1])
    print(f"\nours (frozen), first in the process: {cold:.1f} s "
          f"({cold / floor_before:.2f}x the floor)")
    print(f"ours (frozen), warm: {ours:.1f} s ({ours / floor_before:.2f}x the floor), "
          f"test accuracy {ours_accuracy:.4f} "
          f"(path: {history['path']['head']} on {history.get('feature_engine')}, "
          f"best epoch {history['best']['epoch']})")

    tuned_accuracy = None
    if not args.skip_fine_tuning:
        tuned_config = dataclasses.replace(config, fine_tuning=FineTuningConfig(
            unfreeze_layers=args.fine_tune_layers, learning_rate=args.fine_tune_learning_rate,
            epochs=args.fine_tune_epochs))
        tuned, tuned_accuracy, tuned_history = run_ours(
            tuned_config, examples, transform_dir, root / "tuned", test_encoded, test[1])
        best = tuned_history["best"]
        print(f"ours + fine-tuning ({args.fine_tune_layers} layers, lr "
              f"{args.fine_tune_learning_rate}, {args.fine_tune_epochs} epochs): {tuned:.1f} s, "
              f"test accuracy {tuned_accuracy:.4f} (path: {tuned_history['path']}, "
              f"best: {best['phase']} epoch {best['epoch']})")

    if args.skip_seeds:
        return
    seeds, seeds_accuracy, floor_after = run_seeds(
        train, validation, test, class_names, args.epochs)
    print(f"seeds' way (Keras fit, backbone on every batch): {seeds:.1f} s, "
          f"test accuracy {seeds_accuracy:.4f}")
    print(f"floor at the end: {floor_after:.1f} s")
    floor = min(floor_before, floor_after)
    print("\nresults")
    print(f"  speed-up over the seeds' way: {seeds / ours:.1f}x (target >= 5x): "
          f"{'met' if seeds / ours >= 5 else 'MISSED'}")
    print(f"  ours / floor (the faster floor, {floor:.1f} s): warm {ours / floor:.2f}x "
          f"(target <= 1.3x): {'met' if ours / floor <= 1.3 else 'MISSED'}; first in the "
          f"process {cold / floor:.2f}x: {'met' if cold / floor <= 1.3 else 'MISSED'}")
    if engine_floor is not None:
        print(f"  ours / engine floor ({engine_floor:.1f} s, the Trainer's own overhead): "
              f"warm {ours / engine_floor:.2f}x, first in the process "
              f"{cold / engine_floor:.2f}x")
    print(f"  test accuracy, frozen: ours {ours_accuracy:.4f} vs seeds {seeds_accuracy:.4f} "
          f"(no worse: {'met' if ours_accuracy >= seeds_accuracy else 'MISSED'}; >= 0.85: "
          f"{'met' if ours_accuracy >= 0.85 else 'MISSED'})")
    if tuned_accuracy is not None:
        print(f"  test accuracy after fine-tuning: {tuned_accuracy:.4f} (>= 0.90: "
              f"{'met' if tuned_accuracy >= 0.90 else 'MISSED'})")


if __name__ == "__main__":
    main()
