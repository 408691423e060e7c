"""Typed training settings, shared by the pipeline (which validates them) and
the Transform and Trainer modules (which receive them as `custom_config`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from trainer import backbones


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How the classifier is built and trained.

    Attributes:
        backbone: Registry name of the pretrained network (see `trainer.backbones`).
        weights: "imagenet", "none", or the path of a local weights file.
        image_size: Side of the square model input; None takes the backbone's default.
        epochs: Upper bound on training epochs; early stopping may end sooner.
        batch_size: Examples per training step.
        learning_rate: Adam learning rate for the new head.
        dropout: Dropout rate before the classification layer.
        early_stopping_patience: Epochs without a better validation loss before stopping.
        seed: Seed for head initialisation and shuffling.
    """

    backbone: str = backbones.DEFAULT_BACKBONE
    weights: str = backbones.WEIGHTS_IMAGENET
    image_size: int | None = None
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    dropout: float = 0.2
    early_stopping_patience: int = 3
    seed: int = 0

    @property
    def input_size(self) -> int:
        """The model's input side: `image_size`, or the backbone's default."""
        if self.image_size is not None:
            return self.image_size
        return backbones.get_backbone(self.backbone).default_image_size

    def validate(self) -> TrainingConfig:
        """Checks every setting; returns self so calls can chain.

        Raises:
            ValueError: A setting is impossible; the message names it and the fix.
        """
        backbones.get_backbone(self.backbone)
        backbones.resolve_weights(self.weights)
        _require(self.image_size is None or self.image_size >= 32,
                 f"image_size must be at least 32 pixels, got {self.image_size}")
        _require(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        _require(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        _require(0 < self.learning_rate < 1,
                 f"learning_rate must be in (0, 1), got {self.learning_rate}")
        _require(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _require(self.early_stopping_patience >= 0,
                 f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe form passed to components as `custom_config`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        """Inverse of `to_dict`; unknown keys are an error.

        Raises:
            ValueError: `values` holds a key that is not a setting.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        _require(not unknown, f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**values).validate()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
