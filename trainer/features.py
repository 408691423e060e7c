"""Feature keys, defined once for ingestion, Transform, training, evaluation and serving."""

IMAGE_KEY = "image"
"""Encoded JPEG or PNG bytes of one image."""

LABEL_KEY = "label"
"""Class name: the image's top-level folder."""

PATH_KEY = "relative_path"
"""POSIX path of the source file relative to the data root."""

HASH_KEY = "content_hash"
"""SHA-256 of the source file's bytes; decides the train/eval split."""

TRAIN_SPLIT = "train"
"""The split the Trainer fits on."""

EVAL_SPLIT = "eval"
"""The split the Trainer validates on and the Evaluator gates on."""

TEST_SPLIT = "test"
"""An optional held-out split, for reporting only."""

LABEL_VOCABULARY = "label"
"""Name of the label vocabulary file Transform writes."""


def transformed_name(key: str) -> str:
    """Returns the name Transform gives the transformed form of `key`."""
    return f"{key}_xf"


TRANSFORMED_IMAGE_KEY = transformed_name(IMAGE_KEY)
TRANSFORMED_LABEL_KEY = transformed_name(LABEL_KEY)
