"""Builds the demo image folder from real labelled images that install offline.

Fashion-MNIST from Debian's `dataset-fashion-mnist` when it is installed,
otherwise scikit-learn's bundled handwritten digits; written as PNG files,
one folder per class.
"""

from __future__ import annotations

import argparse
import gzip
import os

import numpy as np
from PIL import Image

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "/usr/share/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` installs the idx files (first found wins)."""
FASHION_MNIST_CLASSES = (
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def load_digits() -> tuple[np.ndarray, list[str]]:
    """scikit-learn's 1 797 8x8 digits as uint8 images and class names."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, [DIGIT_NAMES[target] for target in digits.target]


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_fashion_mnist(directory: str | None = None) -> dict[str, str] | None:
    """Paths of the Fashion-MNIST idx files installed by Debian, or None."""
    if directory is None:
        found = (find_fashion_mnist(candidate) for candidate in FASHION_MNIST_DIRS)
        return next((paths for paths in found if paths is not None), None)
    if not os.path.isdir(directory):
        return None
    names = os.listdir(directory)
    wanted = {
        "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
    }
    found = {}
    for key, stem in wanted.items():
        match = [name for name in names if name.startswith(stem)]
        if not match:
            return None
        found[key] = os.path.join(directory, sorted(match)[0])
    return found


def load_fashion_mnist(split: str = "train", limit: int | None = None):
    """Fashion-MNIST images and class names from Debian's package."""
    paths = find_fashion_mnist()
    if paths is None:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {' or '.join(FASHION_MNIST_DIRS)}; "
            "install it with: apt-get install dataset-fashion-mnist"
        )
    images = _read_idx(paths[f"{split}_images"])[:limit]
    labels = _read_idx(paths[f"{split}_labels"])[:limit]
    return images, [FASHION_MNIST_CLASSES[label] for label in labels]


def write_image_folder(
    images: np.ndarray, labels: list[str], output: str, size: int = 32
) -> int:
    """Writes each image as `<output>/<label>/<index>.png`, upscaled to `size`.

    Returns:
        The number of files written.
    """
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        os.makedirs(os.path.join(output, label), exist_ok=True)
        image = Image.fromarray(pixels).resize((size, size), Image.NEAREST).convert("RGB")
        image.save(os.path.join(output, label, f"{index:05d}.png"))
    return len(labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder to write (one subfolder per class)")
    parser.add_argument("--source", choices=("auto", "digits", "fashion_mnist"), default="auto")
    parser.add_argument("--limit", type=int, default=2000, help="at most this many images")
    args = parser.parse_args(argv)
    use_fashion = args.source == "fashion_mnist" or (
        args.source == "auto" and find_fashion_mnist() is not None
    )
    if use_fashion:
        images, labels = load_fashion_mnist("train", args.limit)
        source = "Fashion-MNIST"
    else:
        images, labels = load_digits()
        images, labels = images[: args.limit], labels[: args.limit]
        source = "scikit-learn digits"
    if os.path.isdir(args.output) and os.listdir(args.output):
        print(f"{args.output} already holds images; leaving it as it is")
        return
    count = write_image_folder(images, labels, args.output)
    print(f"Wrote {count} {source} images in {len(set(labels))} class folders to {args.output}")


if __name__ == "__main__":
    main()
