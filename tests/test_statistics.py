"""StatisticsGen's options on TFX's real StatisticsGen executor, and the pipeline's statistics."""

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.components.statistics_gen import executor as statistics_gen_executor
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs as specs
from tfx.utils import json_utils

from components.statistics import image_stats_options
from pipeline import pipeline as pipeline_def
from tests.conftest import encode, make_image
from trainer import local_inputs

COLOURS = {"red": (200, 30, 30), "blue": (30, 40, 200)}


def _rows(labels: list[str], seed: int) -> list[tuple[bytes, str]]:
    return [(encode(make_image(COLOURS[label], seed + n, size=8 + 4 * n)), label)
            for n, label in enumerate(labels)]


def test_image_bytes_get_byte_sizes_and_labels_keep_their_counts_per_split(tmp_path):
    splits = {"train": _rows(["red", "red", "red", "blue", "blue"], 0),
              "eval": _rows(["red", "blue"], 100)}
    examples = local_inputs.write_examples(tmp_path / "examples", splits)
    statistics = standard_artifacts.ExampleStatistics()
    statistics.uri = str(tmp_path / "statistics")
    statistics_gen_executor.Executor().Do(
        {specs.EXAMPLES_KEY: [examples]}, {specs.STATISTICS_KEY: [statistics]},
        {specs.STATS_OPTIONS_JSON_KEY: image_stats_options().to_json(),
         specs.EXCLUDE_SPLITS_KEY: json_utils.dumps([])})

    for split, rows in splits.items():
        stats = stats_artifact_utils.load_statistics(statistics, split).proto()
        assert stats.datasets[0].num_examples == len(rows)
        by_name = {f.path.step[0]: f for f in stats.datasets[0].features}
        image = by_name["image"]
        assert image.WhichOneof("stats") == "bytes_stats"  # no top values of image bytes
        sizes = [len(encoded) for encoded, _ in rows]
        assert image.bytes_stats.min_num_bytes == min(sizes)
        assert image.bytes_stats.max_num_bytes == max(sizes)
        labels = {bucket.label: bucket.sample_count
                  for bucket in by_name["label"].string_stats.rank_histogram.buckets}
        assert labels == ({"red": 3, "blue": 2} if split == "train" else {"red": 1, "blue": 1})

    # What SchemaGen infers from them still has the image feature, as bytes.
    train = stats_artifact_utils.load_statistics(statistics, "train").proto()
    schema = tfdv.infer_schema(train, infer_feature_shape=True)
    assert {f.name: f.type for f in schema.feature} == {
        "image": schema_pb2.BYTES, "label": schema_pb2.BYTES}


def test_the_pipeline_uses_them_and_transform_computes_no_statistics(data_root, tmp_path):
    built = pipeline_def.create_pipeline(
        pipeline_name="transferline-test", pipeline_root=str(tmp_path / "root"),
        data_root=data_root, serving_model_dir=str(tmp_path / "serving" / "model"))
    nodes = {component.id: component for component in built.components}
    options = tfdv.StatsOptions.from_json(
        nodes[pipeline_def.STATISTICS_GEN].exec_properties[specs.STATS_OPTIONS_JSON_KEY])
    (image,) = options.schema.feature
    assert (image.name, image.WhichOneof("domain_info")) == ("image", "image_domain")
    transform = nodes[pipeline_def.TRANSFORM]
    assert transform.exec_properties[specs.DISABLE_STATISTICS_KEY] == 1
    assert specs.POST_TRANSFORM_STATS_KEY not in transform.outputs
