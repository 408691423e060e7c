"""Default names of the pipeline, of the model it serves and of its KFP experiment.

The pipeline name keys ML Metadata's contexts (locally) and names the pipeline in
Kubeflow Pipelines; the model name is the TF Serving model, `<serving dir>/<model name>`;
runs on Kubeflow Pipelines go into the experiment.
"""

from __future__ import annotations

import re

PIPELINE_NAME = "transferline"
MODEL_NAME = "transferline"
EXPERIMENT_NAME = "transferline"

MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A TF Serving model name that is also one directory under the serving dir: it starts
with a letter or digit, so it is never empty, ".", ".." or a hidden directory, and it
holds no "/" (or anything a URL path or a file system would read otherwise)."""


def check_model_name(name: str, setting: str = "model_name") -> str:
    """Returns `name` if it is a usable model name (see `MODEL_NAME_PATTERN`).

    Args:
        name: The model name.
        setting: How the message names the setting ("--model-name" for the flag).

    Raises:
        ValueError: `name` is not one path component of letters, digits, '.', '_' or '-'.
    """
    if not isinstance(name, str) or MODEL_NAME_PATTERN.fullmatch(name) is None:
        raise ValueError(
            f"{setting} must be one directory name of letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (the TF Serving model name), got {name!r}"
        )
    return name
