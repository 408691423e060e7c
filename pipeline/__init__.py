"""Transferline pipeline assembly, runners and CLI."""

import os

# TFT and TFMA are Keras 2 code: tf.keras must resolve to tf_keras before TF loads.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
