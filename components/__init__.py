"""Transferline's custom TFX components."""

import os

# TFT and TFMA are Keras 2 code: tf.keras must resolve to tf_keras before TF loads.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def __getattr__(name: str):
    """`components.Embeddings`, imported on first use (it needs TensorFlow; Beam workers of
    ingestion import this package without it). Kubeflow V2 finds a custom artifact class
    by its TYPE_NAME read as `<module>.<class>`, a name of exactly one dot."""
    if name == "Embeddings":
        from components.embedder import Embeddings

        return Embeddings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
