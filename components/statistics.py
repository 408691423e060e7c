"""What StatisticsGen computes over image examples.

TFDV takes every BYTES feature for a categorical string: it sketches the top
values and counts the distinct values of each image's encoded bytes, which says
nothing about the images (tfx#1622) and costs time and statistics in proportion
to the bytes. Told that `image` holds images (an ``image_domain`` in the schema
it is given), TFDV computes only presence, value counts and byte sizes
(``bytes_stats``: min, mean and max bytes per image) for it. Every feature stays
in the statistics, so SchemaGen still infers the whole schema, and the label
keeps its counts per split, which the DataGate and the run summary read.
"""

from __future__ import annotations

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2

from trainer import features


def image_stats_options() -> tfdv.StatsOptions:
    """StatisticsGen's options: the image feature as image bytes, the rest as TFDV's defaults."""
    schema = schema_pb2.Schema()
    image = schema.feature.add(name=features.IMAGE_KEY, type=schema_pb2.BYTES)
    image.image_domain.SetInParent()
    return tfdv.StatsOptions(schema=schema)
