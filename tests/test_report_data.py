"""Gathering report data: eval predictions, label counts, training history, errors.

The whole path through a real pipeline run is in tests/test_report.py; here each
piece runs on small hand-made inputs: a tiny SavedModel with the exported
model's `serving_examples` contract, and GZIP TFRecords of tf.Examples.
"""

import pathlib

import pytest
import tensorflow as tf

from pipeline.reporting import eval_predictions, report_data, runs
from tests.conftest import CLASS_COLOURS, encode, make_image
from trainer import export, features

_MODEL_CLASSES = ("red", "green", "blue")  # model-output order, deliberately not sorted


class _ColourModel(tf.Module):
    """Predicts the image's dominant channel: the same outputs as the exported model."""

    def __init__(self):
        super().__init__()
        self.names = tf.constant(list(_MODEL_CLASSES))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        images = tf.io.parse_example(
            examples, {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
        )[features.IMAGE_KEY]

        def mean_rgb(image_bytes):
            image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
            return tf.reduce_mean(tf.cast(image, tf.float32), axis=[0, 1])

        scores = tf.nn.softmax(tf.map_fn(mean_rgb, images, fn_output_signature=tf.float32) / 40.0)
        rows = tf.shape(scores)[0]
        return {
            export.SCORES_OUTPUT: scores,
            export.CLASSES_OUTPUT: tf.tile(self.names[tf.newaxis, :], [rows, 1]),
            export.LABEL_OUTPUT: tf.gather(self.names, tf.argmax(scores, axis=1)),
            export.SCORE_OUTPUT: tf.reduce_max(scores, axis=1),
        }


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("model"))
    module = _ColourModel()
    tf.saved_model.save(module, path, signatures={export.SERVING_EXAMPLES: module.serve})
    return path


def _example(colour: str, label: str, seed: int) -> bytes:
    def feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    image = encode(make_image(CLASS_COLOURS[colour], seed), "PNG")
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                features.IMAGE_KEY: feature(image),
                features.LABEL_KEY: feature(label.encode()),
                features.PATH_KEY: feature(f"{label}/{seed}.png".encode()),
                features.HASH_KEY: feature(str(seed).encode()),
            }
        )
    ).SerializeToString()


def _write_split(split_dir: pathlib.Path, examples: list[bytes]) -> str:
    split_dir.mkdir(parents=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(
        str(split_dir / "data_tfrecord-00000-of-00001.gz"), options
    ) as writer:
        for example in examples:
            writer.write(example)
    return str(split_dir)


# (image colour, label): two images carry the wrong label.
_EVAL_SET = [
    ("red", "red"),
    ("red", "red"),
    ("red", "red"),
    ("green", "green"),
    ("green", "green"),
    ("blue", "red"),
    ("red", "blue"),
]


@pytest.fixture(scope="module")
def eval_split(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("examples")
    return _write_split(
        root / "Split-eval", [_example(c, label, seed) for seed, (c, label) in enumerate(_EVAL_SET)]
    )


def test_evaluate_model_counts_every_prediction(colour_model, eval_split):
    result = eval_predictions.evaluate_model(colour_model, eval_split)

    assert result.split == "eval"
    assert result.model_classes == _MODEL_CLASSES
    assert result.classes == ("blue", "green", "red")
    # Rows: true blue, green, red; columns: predicted blue, green, red.
    assert result.confusion == ((0, 0, 1), (0, 2, 0), (1, 0, 3))
    assert result.examples == 7
    assert result.accuracy == pytest.approx(5 / 7)
    per_class = {c.name: c for c in result.per_class}
    assert (per_class["red"].support, per_class["red"].predicted, per_class["red"].correct) == (
        4,
        4,
        3,
    )
    assert per_class["red"].precision == pytest.approx(0.75)
    assert per_class["red"].recall == pytest.approx(0.75)
    assert per_class["blue"].precision == 0.0 and per_class["blue"].recall == 0.0
    assert per_class["green"].precision == 1.0 and per_class["green"].recall == 1.0


def test_evaluate_model_keeps_the_misclassified_images(colour_model, eval_split):
    result = eval_predictions.evaluate_model(colour_model, eval_split)

    assert result.misclassified_total == 2
    mistakes = {(m.path, m.true_label, m.predicted_label) for m in result.misclassified}
    assert mistakes == {("red/5.png", "red", "blue"), ("blue/6.png", "blue", "red")}
    scores = [m.score for m in result.misclassified]
    assert scores == sorted(scores, reverse=True)
    for mistake in result.misclassified:
        assert tf.io.decode_png(mistake.image).shape == (40, 40, 3)


def test_evaluate_model_keeps_only_the_most_confident_mistakes(colour_model, eval_split):
    everything = eval_predictions.evaluate_model(colour_model, eval_split)
    one = eval_predictions.evaluate_model(colour_model, eval_split, max_misclassified=1)
    none = eval_predictions.evaluate_model(colour_model, eval_split, max_misclassified=0)

    assert one.misclassified == everything.misclassified[:1]
    assert one.misclassified_total == none.misclassified_total == 2
    assert none.misclassified == ()
    assert none.confusion == everything.confusion


def test_evaluate_model_lists_the_signatures(colour_model, eval_split):
    (signature,) = eval_predictions.evaluate_model(colour_model, eval_split).signatures
    assert signature.name == export.SERVING_EXAMPLES
    assert signature.inputs == ("examples: string [None]",)
    assert "scores: float32 [None, 3]" in signature.outputs


def test_class_counts_read_labels_when_there_are_no_statistics(tmp_path):
    _write_split(
        tmp_path / "Split-train",
        [_example("red", "red", 1), _example("red", "blue", 2), _example("green", "red", 3)],
    )
    _write_split(tmp_path / "Split-eval", [_example("green", "green", 4)])

    counts = report_data.class_counts_per_split(str(tmp_path), statistics_uri=None)

    assert counts == {"eval": {"green": 1}, "train": {"blue": 1, "red": 2}}


def test_history_phases_reads_flat_and_phased_histories():
    flat = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}
    assert report_data.history_phases(flat) == {
        "head": {"loss": (1.0, 0.5), "val_loss": (1.1, 0.7)}
    }

    phased = {
        "path": {"head": "cached_features", "fine_tuning": "end_to_end"},
        "best": {"phase": "fine_tuning", "epoch": 1, "val_loss": 0.4},
        "head": {"loss": [1.0], "val_loss": [0.9]},
        "fine_tuning": {"loss": [0.6, 0.5], "val_loss": [0.4, 0.45]},
        "unfrozen_layers": ["block_16"],
    }
    assert report_data.history_phases(phased) == {
        "head": {"loss": (1.0,), "val_loss": (0.9,)},
        "fine_tuning": {"loss": (0.6, 0.5), "val_loss": (0.4, 0.45)},
    }
    assert report_data.history_phases({}) == {}


def test_open_store_refuses_a_workdir_without_metadata(tmp_path):
    with pytest.raises(runs.ReportError, match="no ML Metadata at .*metadata.sqlite"):
        runs.open_store(str(tmp_path))
    assert not (tmp_path / "metadata.sqlite").exists()


def test_iso_time():
    assert report_data.iso_time(1795446713701) == "2026-11-23 15:11:53 UTC"
    assert report_data.iso_time(None) == ""
