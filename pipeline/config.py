"""Typed pipeline settings beyond training: ingestion and the blessing gate."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """How the image folder becomes examples.

    Attributes:
        eval_percent: Share of images (by content hash) held out for evaluation
            when the folder is not already split.
        min_images_per_class: A class with fewer usable images stops the run.
        max_side: Longer image sides above this are downscaled at ingestion.
    """

    eval_percent: int = 20
    min_images_per_class: int = 2
    max_side: int = 1024

    def validate(self) -> IngestConfig:
        """Raises ValueError naming an impossible setting; returns self."""
        if not 1 <= self.eval_percent <= 99:
            raise ValueError(f"eval_percent must be in [1, 99], got {self.eval_percent}")
        if self.min_images_per_class < 1:
            raise ValueError(
                f"min_images_per_class must be >= 1, got {self.min_images_per_class}"
            )
        if self.max_side < 32:
            raise ValueError(f"max_side must be >= 32 pixels, got {self.max_side}")
        return self


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """When the Evaluator blesses a model.

    Attributes:
        min_accuracy: Absolute lower bound on eval accuracy.
        max_accuracy_drop: Largest accepted drop in accuracy against the last
            blessed model (0 means no regression at all).
    """

    min_accuracy: float = 0.5
    max_accuracy_drop: float = 0.01

    def validate(self) -> GateConfig:
        """Raises ValueError naming an impossible setting; returns self."""
        if not 0 <= self.min_accuracy <= 1:
            raise ValueError(f"min_accuracy must be in [0, 1], got {self.min_accuracy}")
        if not 0 <= self.max_accuracy_drop <= 1:
            raise ValueError(f"max_accuracy_drop must be in [0, 1], got {self.max_accuracy_drop}")
        return self
