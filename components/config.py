"""Typed settings of our TFX components: ingestion (ImageFolderExampleGen, DataGate)
and the blessing gate (Evaluator, Pusher)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """How the image folder becomes examples, and when they are fit to train on.

    Read by ImageFolderExampleGen (the file rules in `components/file_outcome.py`
    and `components/image_normalization.py`), by `transferline scan`, and by the
    DataGate.

    Attributes:
        eval_percent: Share of images (by content hash) held out for evaluation
            when the folder is not already split.
        test_percent: Share held out, by content hash, as a `test` split for
            reporting when the folder is not already split (0: no test split).
        min_images_per_class: A class with fewer usable images stops the run.
        max_side: Images whose longer side exceeds this are downscaled at
            ingestion (aspect ratio kept) so that the longer side equals it.
        max_pixels: Images with more than this many pixels (width x height),
            read from the header before any decoding, are skipped as
            decompression bombs.
        jpeg_quality: Quality of images re-encoded as JPEG at ingestion.
        span: With `span-<N>` folders, the span to ingest; 0 means the latest.
        span_window: With `span-<N>` folders, Transform and the Trainer read
            the last this many spans ingested (a rolling window); 1 is the
            ingested span alone.
        min_examples: The data gate stops the run below this many examples.
        max_label_drift: The data gate stops the run when the training label
            distribution moved further than this from the previous span's
            (L-infinity distance, 0 to 1).
    """

    eval_percent: int = 20
    test_percent: int = 0
    min_images_per_class: int = 2
    max_side: int = 1024
    max_pixels: int = 100_000_000
    jpeg_quality: int = 95
    span: int = 0
    span_window: int = 1
    min_examples: int = 10
    max_label_drift: float = 0.25

    def validate(self) -> IngestConfig:
        """Raises ValueError naming an impossible setting; returns self."""
        if not 1 <= self.eval_percent <= 99:
            raise ValueError(f"eval_percent must be in [1, 99], got {self.eval_percent}")
        if not 0 <= self.test_percent <= 98 or self.eval_percent + self.test_percent > 99:
            raise ValueError(
                f"test_percent must be >= 0 and leave training data: eval_percent "
                f"{self.eval_percent} + test_percent {self.test_percent} must be <= 99"
            )
        if self.min_images_per_class < 1:
            raise ValueError(
                f"min_images_per_class must be >= 1, got {self.min_images_per_class}"
            )
        _require_int_in_range("max_side", self.max_side, 32, None)
        _require_int_in_range("max_pixels", self.max_pixels, 1, None)
        _require_int_in_range("jpeg_quality", self.jpeg_quality, 1, 100)
        if self.span < 0:
            raise ValueError(f"span must be >= 0 (0 = the latest), got {self.span}")
        if self.span_window < 1:
            raise ValueError(f"span_window must be >= 1, got {self.span_window}")
        if self.min_examples < 1:
            raise ValueError(f"min_examples must be >= 1, got {self.min_examples}")
        if not 0 < self.max_label_drift <= 1:
            raise ValueError(f"max_label_drift must be in (0, 1], got {self.max_label_drift}")
        return self


def _require_int_in_range(name: str, value: object, low: int, high: int | None) -> None:
    """Raises ValueError naming `name` unless `value` is an int with low <= value (<= high)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """What reaches TF Serving: when the Evaluator blesses a model, and what the Pusher keeps.

    Attributes:
        min_accuracy: Absolute lower bound on eval accuracy.
        max_accuracy_drop: Largest accepted drop in accuracy against the last
            blessed model (0 means no regression at all).
        min_class_recall: Lower bound on every class's recall (its accuracy on
            the eval images of that class); 0 turns the check off.
        accuracy_top_k: k of the top-k accuracy the Evaluator reports (shown
            when the model has more than k classes).
        keep_versions: Versions kept under the serving model directory; older
            ones are deleted after a push, never the newest.
    """

    min_accuracy: float = 0.5
    max_accuracy_drop: float = 0.01
    min_class_recall: float = 0.0
    accuracy_top_k: int = 5
    keep_versions: int = 5

    def validate(self) -> GateConfig:
        """Raises ValueError naming an impossible setting; returns self."""
        if not 0 <= self.min_accuracy <= 1:
            raise ValueError(f"min_accuracy must be in [0, 1], got {self.min_accuracy}")
        if not 0 <= self.max_accuracy_drop <= 1:
            raise ValueError(f"max_accuracy_drop must be in [0, 1], got {self.max_accuracy_drop}")
        if not 0 <= self.min_class_recall <= 1:
            raise ValueError(f"min_class_recall must be in [0, 1], got {self.min_class_recall}")
        if self.accuracy_top_k < 2:
            raise ValueError(f"accuracy_top_k must be >= 2, got {self.accuracy_top_k}")
        if self.keep_versions < 1:
            raise ValueError(
                f"keep_versions must be >= 1 (the version being served), got {self.keep_versions}"
            )
        return self
