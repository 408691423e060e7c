"""Shared fixtures: tiny, generated image folders (no downloads)."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import io  # noqa: E402
import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

# The interface: ML Metadata, run_summary.json, Kubeflow task names and the report
# all name nodes by these ids. Literal on purpose.
EXPECTED_NODE_IDS = [
    "ImageFolderExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "DataGate",
    "Transform", "Embedder", "Tuner", "WarmStartModel", "Trainer", "ServingBaseline", "Evaluator",
    "Pusher",
]
TUNE_ONLY_NODE_IDS = ["Tuner"]
"""Nodes only a run with --tune has."""
DEFAULT_NODE_IDS = [node for node in EXPECTED_NODE_IDS if node not in TUNE_ONLY_NODE_IDS]
"""The nodes of a pipeline built with the default settings."""

# Three classes a pretrained backbone separates easily: a dominant colour each.
CLASS_COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def make_image(colour, seed: int, size: int = 40) -> Image.Image:
    """A textured image of one dominant colour, different for every seed."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def encode(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def write_class_folder(root: pathlib.Path, per_class: int, seed_offset: int = 0) -> pathlib.Path:
    """`root/<colour>/<n>.png|jpg`, alternating PNG and JPEG files."""
    for class_index, (label, colour) in enumerate(CLASS_COLOURS.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            seed = seed_offset + class_index * 10_000 + n
            image_format, suffix = ("PNG", "png") if n % 2 else ("JPEG", "jpg")
            (root / label / f"{n:03d}.{suffix}").write_bytes(
                encode(make_image(colour, seed), image_format)
            )
    return root


@pytest.fixture
def image_folder(tmp_path: pathlib.Path) -> pathlib.Path:
    """A small class-per-folder dataset: 3 classes x 12 images."""
    return write_class_folder(tmp_path / "images", per_class=12)


@pytest.fixture
def data_root(tmp_path: pathlib.Path) -> str:
    """Two class folders with one tiny PNG each: enough for create_pipeline to list."""
    for label in ("cat", "dog"):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / "1.png").write_bytes(encode(Image.new("RGB", (1, 1))))
    return str(tmp_path / "data")


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """One tiny pipeline run, its report and its cached re-run (see tests/shared_run.py)."""
    from tests import shared_run  # imports the pipeline: only for the tests that use it

    return shared_run.run(tmp_path_factory.mktemp("shared_run"))
