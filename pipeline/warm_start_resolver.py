"""Which model the Trainer warm-starts from: the last one blessed before its data.

Not simply the latest blessed model: re-running the pipeline on unchanged data
would then hand the Trainer a new base model (the one the previous run blessed),
so the Trainer would never be a cache hit and every run would train and push
again. The last model blessed before the newest of the training examples was
ingested is the same on every re-run of the same data, and moves on when a new
span lands.
"""

from __future__ import annotations

import ml_metadata as mlmd
from tfx import types
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
    LatestBlessedModelStrategy,
)

MODEL_KEY = "model"
MODEL_BLESSING_KEY = "model_blessing"
EXAMPLES_KEY = "examples"


class BlessedBeforeDataStrategy(LatestBlessedModelStrategy):
    """The latest blessed Model registered in ML Metadata before the newest
    `examples` artifact (ML Metadata's ids grow with time, as TFX's own
    LatestBlessedModelStrategy assumes); no model when there is none."""

    def resolve_artifacts(
        self, store: mlmd.MetadataStore, input_dict: dict[str, list[types.Artifact]]
    ) -> dict[str, list[types.Artifact]] | None:
        examples = input_dict.get(EXAMPLES_KEY, [])
        newest = max((artifact.id for artifact in examples), default=None)
        models = [m for m in input_dict.get(MODEL_KEY, []) if newest is not None and m.id < newest]
        blessings = input_dict.get(MODEL_BLESSING_KEY, [])
        if not models or not blessings:
            return {MODEL_KEY: [], MODEL_BLESSING_KEY: [], EXAMPLES_KEY: examples}
        result = self._resolve({MODEL_KEY: models, MODEL_BLESSING_KEY: blessings},
                               MODEL_KEY, MODEL_BLESSING_KEY)
        return {**result, EXAMPLES_KEY: examples}
