"""Photo-like JPEGs for the benchmarks: smooth structure plus grain.

They compress and decode like photos (unlike flat or pure-noise images), so
decode-bound timings mean something. Imported by the benchmark scripts, which
run with this folder on `sys.path` (`python benchmarks/<script>.py`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo_jpeg(
    rng: np.random.Generator, width: int, height: int, colour: tuple[int, int, int]
) -> bytes:
    """A `width` x `height` JPEG around `colour`, different for every draw of `rng`."""
    coarse = rng.normal(0, 40, (24, 24, 3)) + np.array(colour)
    image = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB").resize(
        (width, height), Image.Resampling.BILINEAR
    )
    grain = rng.normal(0, 6, (height, width, 1)).astype(np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()
