"""Real Trainer inputs for tests (`trainer.local_inputs`) on generated colour images,
built once per test session. Nothing is mocked.
"""

from __future__ import annotations

import atexit
import functools
import pathlib
import shutil
import tempfile
from collections.abc import Sequence

import tensorflow as tf
from tfx import v1 as tfx
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts

from tests.conftest import CLASS_COLOURS, encode, make_image
from trainer import features
from trainer.config import TrainingConfig
from trainer.local_inputs import Row, make_fn_args, write_examples, write_transform_output

SPLITS = (features.TRAIN_SPLIT, features.EVAL_SPLIT)


def colour_rows(per_class: dict[str, int], seed_offset: int = 0, size: int = 40) -> list[Row]:
    """Encoded textured images of one dominant colour per class (see conftest)."""
    rows = []
    for class_index, (label, count) in enumerate(per_class.items()):
        for n in range(count):
            seed = seed_offset + class_index * 10_000 + n
            image = make_image(CLASS_COLOURS[label], seed, size)
            rows.append((encode(image, "PNG" if n % 2 else "JPEG"), label))
    return rows


def serve(export_dir: str, images: Sequence[bytes]) -> dict[str, tf.Tensor]:
    """Runs the exported model's serving_default on encoded images."""
    from trainer import export

    loaded = tf.saved_model.load(export_dir)
    return loaded.signatures[export.SERVING_DEFAULT](
        **{export.IMAGE_BYTES_INPUT: tf.constant(list(images))}
    )


# ------------------------------------------------- shared across the test session

_SESSION_ROOT = pathlib.Path(tempfile.mkdtemp(prefix="transferline_trainer_tests_"))
atexit.register(shutil.rmtree, _SESSION_ROOT, ignore_errors=True)

TRAIN_PER_CLASS = {"red": 20, "green": 20, "blue": 20}
EVAL_PER_CLASS = {"red": 4, "green": 4, "blue": 4}


@functools.cache
def colour_examples(
    train: tuple[tuple[str, int], ...] = tuple(TRAIN_PER_CLASS.items()),
    eval_: tuple[tuple[str, int], ...] = tuple(EVAL_PER_CLASS.items()),
) -> tuple[standard_artifacts.Examples, tuple[Row, ...], tuple[Row, ...]]:
    """Train and eval splits of colour images, written once per test session."""
    train_rows = colour_rows(dict(train))
    eval_rows = colour_rows(dict(eval_), seed_offset=5_000)
    root = pathlib.Path(tempfile.mkdtemp(dir=_SESSION_ROOT))
    examples = write_examples(root, {"train": train_rows, "eval": eval_rows})
    return examples, tuple(train_rows), tuple(eval_rows)


@functools.cache
def transform_output_for(backbone: str, image_size: int, rows: tuple[Row, ...]) -> str:
    """A Transform output for one backbone's preprocessing, built once per session."""
    config = TrainingConfig(backbone=backbone, weights="imagenet" if backbone.startswith(
        "hub:") else "none", image_size=image_size)
    root = pathlib.Path(tempfile.mkdtemp(dir=_SESSION_ROOT))
    return write_transform_output(root / "transform", config, rows, root / "tmp")


def examples_at(uri: str) -> standard_artifacts.Examples:
    """The Examples artifact `write_examples` wrote at `uri` (train and eval splits)."""
    examples = standard_artifacts.Examples()
    examples.uri = uri
    examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    return examples


def fn_args_for(
    config: TrainingConfig,
    workdir: pathlib.Path,
    train: dict[str, int] | None = None,
    eval_: dict[str, int] | None = None,
) -> tfx.components.FnArgs:
    """FnArgs for `config` on the colour examples, with a matching Transform output."""
    examples, train_rows, _ = colour_examples(
        tuple((train or TRAIN_PER_CLASS).items()), tuple((eval_ or EVAL_PER_CLASS).items()))
    transform_dir = transform_output_for(config.backbone, config.input_size, train_rows)
    return make_fn_args(examples, transform_dir, config, workdir)
