"""A local TF-Hub feature-vector SavedModel as a Keras layer.

TF-Hub image feature vectors (https://www.kaggle.com/models?tfhub-redirect=true,
"feature_vector" models) are TF2 SavedModels following the Reusable SavedModel
API: a ``__call__`` that maps a batch of float RGB images in [0, 1] to a batch of
feature vectors, optionally taking ``training``, plus ``variables`` and
``trainable_variables`` attributes. This module loads such a directory with
`tf.saved_model.load` and wraps it as a Keras layer, as ``hub.KerasLayer`` does,
without the ``tensorflow_hub`` package (0.15 cannot be imported next to
TensorFlow 2.16: it imports ``tf.compat.v1.estimator``, which 2.16 removed).

The whole module is one layer: fine-tuning unfreezes it whole.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import tensorflow as tf

from trainer.errors import one_line

SAVED_MODEL_FILE = "saved_model.pb"
HUB_IMAGE_SIZE = 224
"""The TF-Hub convention for image modules without a fixed input size."""


def check_saved_model_dir(path: str) -> None:
    """Raises ValueError unless `path` is a SavedModel directory."""
    if not tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_FILE)):
        raise ValueError(
            f"backbone 'hub:{path}': {path!r} is not a SavedModel directory "
            f"(no {SAVED_MODEL_FILE}); give the directory of a TF-Hub feature-vector model"
        )


class SavedModelFeatureVector(tf.keras.layers.Layer):
    """Images in [0, 1] -> feature vectors, computed by a loaded SavedModel.

    The SavedModel's variables become this layer's weights (trainable ones only
    while the layer is trainable), and the loaded object is tracked, so a model
    holding this layer saves with `tf.saved_model.save`. Computation stays in
    float32 whatever the global mixed-precision policy.
    """

    def __init__(self, path: str, trainable: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(trainable=trainable, **kwargs)
        check_saved_model_dir(path)
        self.path = path
        self._module = tf.saved_model.load(path)
        if not callable(self._module):
            raise ValueError(
                f"backbone 'hub:{path}': the SavedModel has no __call__ function; expected a "
                "TF2 feature-vector SavedModel (the Reusable SavedModel API of TF-Hub)"
            )
        self._takes_training = "training" in inspect.signature(self._module.__call__).parameters
        trainable_ids = set()
        for variable in getattr(self._module, "trainable_variables", ()):
            self._add_existing_weight(variable, trainable=True)
            trainable_ids.add(id(variable))
        for variable in getattr(self._module, "variables", ()):
            if id(variable) not in trainable_ids:
                self._add_existing_weight(variable, trainable=False)

    def _add_existing_weight(self, variable: tf.Variable, trainable: bool) -> None:
        self.add_weight(
            name=variable.name, shape=variable.shape, dtype=variable.dtype,
            trainable=trainable, experimental_autocast=False,
            getter=lambda *_, **__: variable,
        )

    def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not self._takes_training:
            return self._module(images)
        # Like BatchNormalization: a frozen module always runs in inference mode.
        return self._module(images, training=bool(training) and self.trainable)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "path": self.path}


def build_feature_vector(
    path: str, input_shape: tuple[int, int, int], weights: str | None, include_top: bool
) -> tf.keras.Model:
    """A Keras model around the SavedModel at `path`: images -> feature vectors.

    Args:
        path: The SavedModel directory.
        input_shape: (height, width, 3) of images already scaled to [0, 1].
        weights: Unused: the SavedModel carries its own weights.
        include_top: Unused: a feature vector has no classification top.

    Raises:
        ValueError: The directory is not a feature-vector SavedModel, or it does
            not take images of `input_shape`.
    """
    del weights, include_top
    images = tf.keras.Input(shape=input_shape, name="images")
    layer = SavedModelFeatureVector(path, name="feature_vector")
    try:
        vectors = layer(images)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"backbone 'hub:{path}' does not take {input_shape[0]}x{input_shape[1]} RGB "
            f"images ({one_line(error)}); set image_size to the size the "
            "model was exported for"
        ) from error
    if len(vectors.shape) != 2:
        raise ValueError(
            f"backbone 'hub:{path}' returns shape {vectors.shape}, not a batch of feature "
            "vectors; give a feature_vector model, not a classifier or a feature map"
        )
    return tf.keras.Model(images, vectors, name="hub_feature_vector")
