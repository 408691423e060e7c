"""The Embedder: real Beam (RunInference), real Transform graphs, real backbones and TFX artifacts.

The executor writes one vector per example with the vocabulary's label id; the
Trainer's head phase trains on those vectors without running the backbone; the
exported model (Transform + backbone + head) scores real images exactly as the
head scores their vectors; and only what the vectors depend on reaches the node,
so ML Metadata keeps it cached across head-only changes.
"""

import dataclasses
import hashlib
import json
import os
import pathlib

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference import base as inference
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils, standard_artifacts

from components import embedder
from pipeline import pipeline as pipeline_def
from tests import serving_testing, trainer_testing
from trainer import embeddings, export, local_inputs, model, phases, warm_start
from trainer.config import AugmentationConfig, HeadConfig, TrainingConfig

SERVING_SETTINGS = embeddings.embedding_settings(serving_testing.CONFIG)
TRAINED = TrainingConfig(
    backbone="efficientnet_lite0", weights="imagenet", image_size=32, epochs=3,
    batch_size=16, learning_rate=0.05, head=HeadConfig(dropout=0.1),
)


def _example(image: bytes, label: str, path: str) -> bytes:
    def feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image": feature(image), "label": feature(label.encode()),
        "relative_path": feature(path.encode()),
        "content_hash": feature(hashlib.sha256(image).hexdigest().encode()),
    })).SerializeToString()


def _write_examples(root: pathlib.Path, splits: dict[str, list[tuple[bytes, str, str]]]):
    """Examples as ImageFolderExampleGen writes them: gzip TFRecords, every feature."""
    for split, rows in splits.items():
        (root / f"Split-{split}").mkdir(parents=True)
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        with tf.io.TFRecordWriter(str(root / f"Split-{split}" / "data-0.gz"), options) as w:
            for row in rows:
                w.write(_example(*row))
    return trainer_testing.examples_at(str(root)) if set(splits) == {"train", "eval"} else None


def _embed(examples, transform_dir: str, settings: dict, out: pathlib.Path):
    """Runs the Embedder's executor on the in-memory DirectRunner; returns its artifact."""
    transform_graph = standard_artifacts.TransformGraph()
    transform_graph.uri = transform_dir
    output = embedder.Embeddings()
    output.uri = str(out)
    executor = embedder.Executor(base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=["--direct_running_mode=in_memory"], tmp_dir=str(out / "tmp")))
    executor.Do(
        {"examples": [examples], "transform_graph": [transform_graph]},
        {"embeddings": [output]}, settings)
    return output


def _records(uri: str, split: str) -> list[tf.train.Example]:
    """The split's records, parsed with TensorFlow's own protos."""
    files = tf.io.gfile.glob(os.path.join(uri, f"Split-{split}", "*"))
    return [tf.train.Example.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _value(record: tf.train.Example, key: str):
    feature = record.features.feature[key]
    kind = feature.WhichOneof("kind")
    values = list(getattr(feature, kind).value)
    return values if key == "embedding" else values[0]


def _serving_transform_dir() -> str:
    """The session's Transform output of tests/serving_testing.py (mobilenet_v2, 32 px)."""
    transform_output, _ = serving_testing.shared_transform_output()
    return os.path.dirname(transform_output.transform_savedmodel_dir)


@pytest.fixture(scope="module")
def colour_rows():
    """Rows (image, label, relative path) of the session's colour images, per split."""
    _, train, eval_ = trainer_testing.colour_examples()
    return {
        split: [(image, label, f"{split}/{label}/{n:03d}.png")
                for n, (image, label) in enumerate(rows)]
        for split, rows in (("train", train), ("eval", eval_))
    }


def test_the_executor_writes_one_vector_per_example_with_its_label_id(tmp_path):
    rows = {
        "train": [(serving_testing.colour_image(label, n), label, f"{label}/{n}.png")
                  for n, label in enumerate(["red", "green", "blue", "red", "blue"])],
        "eval": [(serving_testing.colour_image("green", 50), "green", "green/50.png"),
                 (serving_testing.colour_image("red", 0), "purple", "purple/0.png")],
    }
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    _write_examples(tmp_path / "examples", rows)
    output = _embed(examples, _serving_transform_dir(), SERVING_SETTINGS,
                    tmp_path / "embeddings")

    assert artifact_utils.decode_split_names(
        output.get_string_custom_property("split_names")) == ["eval", "train"]
    train = {_value(r, "relative_path"): r for r in _records(output.uri, "train")}
    # Vocabulary by frequency in the Transform's data: red, green, blue.
    assert {path.decode(): (_value(r, "label"), _value(r, "label_id"))
            for path, r in train.items()} == {
        "red/0.png": (b"red", 0), "green/1.png": (b"green", 1), "blue/2.png": (b"blue", 2),
        "red/3.png": (b"red", 0), "blue/4.png": (b"blue", 2),
    }
    assert _value(train[b"red/0.png"], "content_hash") == hashlib.sha256(
        rows["train"][0][0]).hexdigest().encode()
    assert {len(_value(r, "embedding")) for r in train.values()} == {1280}  # MobileNetV2's
    assert _value(train[b"red/0.png"], "embedding") != _value(train[b"red/3.png"], "embedding")
    evaluated = {_value(r, "relative_path"): r for r in _records(output.uri, "eval")}
    # The same image bytes under another label: the same vector, and no label id.
    assert _value(evaluated[b"purple/0.png"], "label_id") == -1
    np.testing.assert_allclose(_value(evaluated[b"purple/0.png"], "embedding"),
                               _value(train[b"red/0.png"], "embedding"), rtol=1e-5)
    # The Trainer's reader leaves the unknown label out.
    vectors, label_ids = embeddings.read_split(output.uri, "eval", 1280)
    assert vectors.shape == (1, 1280) and label_ids.tolist() == [1]


class _RecordingHandler(embedder.EmbeddingModelHandler):
    """The Embedder's handler, also recording each batch's size as a Beam distribution."""

    def run_inference(self, batch, model, inference_args=None):
        Metrics.distribution("test", "batch_size").update(len(batch))
        return super().run_inference(batch, model, inference_args)


def test_the_backbone_runs_on_bounded_batches(tmp_path):
    serialized = [_example(serving_testing.colour_image("red", n), "red", f"{n}.png")
                  for n in range(11)]
    handler = _RecordingHandler(SERVING_SETTINGS, _serving_transform_dir(),
                                max_batch_size=4)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 4}
    pipeline = beam.Pipeline(argv=["--direct_running_mode=in_memory"])
    _ = (pipeline | beam.Create(serialized) | inference.RunInference(handler)
         | beam.Map(lambda record: None))
    result = pipeline.run()
    result.wait_until_finish()
    metrics = result.metrics()
    (sizes,) = metrics.query(MetricsFilter().with_namespace("test"))["distributions"]
    (embedded,) = metrics.query(MetricsFilter().with_name(embedder.EXAMPLES_EMBEDDED))["counters"]
    assert sizes.committed.max <= 4 and sizes.committed.sum == 11
    assert embedded.committed == 11


@pytest.fixture(scope="module")
def trained_on_embeddings(tmp_path_factory, colour_rows):
    """The Trainer run on the Embedder's output of the colour examples, and that output."""
    root = tmp_path_factory.mktemp("on_embeddings")
    examples = _write_examples(root / "examples", colour_rows)
    _, train_rows, _ = trainer_testing.colour_examples()
    transform_dir = trainer_testing.transform_output_for(
        TRAINED.backbone, TRAINED.input_size, train_rows)
    output = _embed(examples, transform_dir, embeddings.embedding_settings(TRAINED),
                    root / "embeddings")
    fn_args = local_inputs.make_fn_args(examples, transform_dir, TRAINED, root / "work")
    fn_args.custom_config = {**fn_args.custom_config, embeddings.URI_KEY: output.uri}
    history = model.train_and_export(fn_args)
    return fn_args, history, output


def test_the_head_trains_on_the_embeddings_without_a_backbone_pass(trained_on_embeddings):
    fn_args, history, _ = trained_on_embeddings
    assert history["head_inputs"] == phases.HEAD_INPUTS_EMBEDDER == "embedder"
    assert history["path"] == {phases.HEAD_PHASE: phases.PATH_CACHED}
    assert "feature_engine" not in history  # set only when a backbone runs over images
    assert len(history[phases.HEAD_PHASE]["loss"]) == TRAINED.epochs
    recorded = json.loads(pathlib.Path(fn_args.model_run_dir, model.HISTORY_FILE).read_text())
    assert recorded["head_inputs"] == "embedder"
    # The reserved key is not a setting: the model records the settings alone.
    assert embeddings.URI_KEY not in export.read_training_record(
        fn_args.serving_model_dir)["config"]


def test_served_scores_equal_the_heads_scores_on_the_embeddings(trained_on_embeddings,
                                                                 colour_rows):
    fn_args, _, output = trained_on_embeddings
    records = {_value(r, "relative_path").decode(): r for r in _records(output.uri, "eval")}
    paths = sorted(records)
    vectors = np.array([_value(records[path], "embedding") for path in paths])
    # The head alone (a softmax Dense layer, dropout off), from its saved weights, in numpy.
    checkpoint = os.path.join(warm_start.warm_start_dir(fn_args.serving_model_dir),
                              warm_start.CHECKPOINT_PREFIX)
    kernel, bias = (
        tf.train.load_variable(checkpoint, f"head/layer_with_weights-0/{name}/.ATTRIBUTES/"
                                           "VARIABLE_VALUE") for name in ("kernel", "bias"))
    assert kernel.shape == (vectors.shape[1], 3)
    logits = vectors @ kernel + bias
    head_scores = np.exp(logits - logits.max(axis=1, keepdims=True))
    head_scores /= head_scores.sum(axis=1, keepdims=True)

    images = {path: image for image, _, path in colour_rows["eval"]}
    served = trainer_testing.serve(fn_args.serving_model_dir, [images[p] for p in paths])
    np.testing.assert_allclose(served[export.SCORES_OUTPUT].numpy(), head_scores,
                               rtol=1e-4, atol=1e-6)
    assert len(paths) == 12 and head_scores.max(axis=1).min() > 1 / 3


def test_embedder_settings_change_with_the_backbone_not_with_the_head(data_root, tmp_path):
    def build(config: TrainingConfig):
        built = pipeline_def.create_pipeline(
            pipeline_name="transferline-test", pipeline_root=str(tmp_path / "root"),
            data_root=data_root, serving_model_dir=str(tmp_path / "serving" / "m"),
            training=config)
        return {node.id: node for node in built.components}

    base = TrainingConfig(image_size=64)
    head_only = dataclasses.replace(base, learning_rate=0.01, epochs=3, head=HeadConfig(
        dropout=0.5, dense_units=(16,)))
    nodes = build(base)
    assert nodes[pipeline_def.EMBEDDER].exec_properties == {
        "backbone": "efficientnet_lite0", "weights": "imagenet", "cut_layer": "",
        "image_size": 64, "pooling": "avg",
    }
    assert (build(head_only)[pipeline_def.EMBEDDER].exec_properties
            == nodes[pipeline_def.EMBEDDER].exec_properties)
    assert build(dataclasses.replace(base, image_size=96))[
        pipeline_def.EMBEDDER].exec_properties["image_size"] == 96
    assert build(dataclasses.replace(base, head=HeadConfig(pooling="max")))[
        pipeline_def.EMBEDDER].exec_properties["pooling"] == "max"
    # The Trainer reads the Embedder's output; with augmentation there is no Embedder.
    assert nodes[pipeline_def.TRAINER].inputs["embeddings"] is nodes[
        pipeline_def.EMBEDDER].outputs["embeddings"]
    flipped = AugmentationConfig(horizontal_flip=True)
    augmented = build(dataclasses.replace(base, augmentation=flipped))
    assert pipeline_def.EMBEDDER not in augmented
    assert "embeddings" not in augmented[pipeline_def.TRAINER].inputs
