"""Awkward image files for the ingestion tests: builders, and a folder holding one of each.

The zoo is every kind of file an image folder holds: images each rule keeps or
converts, broken and fake images, system and hidden files, symlinks (to files,
to folders, looping, broken) and a hard link.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from components.file_outcome import IngestedFile, ingest_file
from components.folder_walk import walk_image_folder

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def encode_as(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    array = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(array if channels > 1 else array[..., 0], mode=mode)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _rotated_jpeg(width: int, height: int, orientation: int) -> bytes:
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (0, 0, width // 4, height // 4))  # Marks the top-left.
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode_as(image, "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    return encode_as(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _palette_png_with_transparency() -> bytes:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0] + list(RED) + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 4, 8))  # Left half uses the transparent index 0.
    return encode_as(image, "PNG", transparency=0)


def _rgba_png() -> bytes:
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 4, 8))  # Transparent *black* left half.
    return encode_as(image, "PNG")


def _sixteen_bit_png(value: int) -> bytes:
    array = np.full((8, 8), value, dtype=np.uint16)
    image = Image.fromarray(array)
    assert image.mode == "I;16"
    return encode_as(image, "PNG")


def _pgm16(value: int) -> bytes:
    return b"P5\n4 4\n65535\n" + struct.pack(">H", value) * 16


GOOD_JPEG = encode_as(noise(48, 32), "JPEG", quality=90)
GOOD_PNG = encode_as(noise(40, 30), "PNG")

# relative path -> bytes; None for entries made specially (links, folders).
ZOO: dict[str, bytes] = {
    "cats/plain.jpg": GOOD_JPEG,
    "cats/plain.png": GOOD_PNG,
    "cats/progressive.jpg": encode_as(noise(30, 20), "JPEG", progressive=True),
    "cats/upright.jpg": _rotated_jpeg(30, 20, orientation=1),
    "cats/animated.png": encode_as(
        Image.new("RGB", (8, 8), RED), "PNG", save_all=True,
        append_images=[Image.new("RGB", (8, 8), BLUE)],
    ),
    "cats/deep/nested/photo.jpeg": encode_as(noise(20, 20, seed=1), "JPEG"),
    "cats/cmyk.jpg": encode_as(Image.new("CMYK", (16, 12), (0, 255, 255, 0)), "JPEG"),
    "cats/gray.png": encode_as(Image.new("L", (10, 10), 77), "PNG"),
    "cats/gray.jpg": encode_as(Image.new("L", (10, 10), 77), "JPEG"),
    "cats/sixteen.png": _sixteen_bit_png(0x8040),
    "cats/sixteen.pgm": _pgm16(0xC0FF),
    "cats/palette.png": _palette_png_with_transparency(),
    "cats/palette_opaque.gif": encode_as(Image.new("P", (8, 8), 0), "GIF"),
    "cats/rgba.png": _rgba_png(),
    "cats/rotated.jpg": _rotated_jpeg(40, 20, orientation=6),
    "cats/animated.gif": _animated_gif(),
    "cats/lossy.webp": encode_as(noise(24, 24), "WEBP", quality=80),
    "cats/lossless.webp": encode_as(noise(24, 24), "WEBP", lossless=True),
    "cats/scan.tif": encode_as(noise(24, 16), "TIFF"),
    "cats/scan.tiff": encode_as(Image.new("RGBA", (8, 8), (0, 0, 255, 128)), "TIFF"),
    "cats/drawing.bmp": encode_as(noise(12, 12), "BMP"),
    "cats/icon.ico": encode_as(Image.new("RGBA", (32, 32), (0, 255, 0, 255)), "ICO"),
    "cats/frame.ppm": encode_as(noise(9, 7), "PPM"),
    "dogs/big.jpg": encode_as(Image.new("RGB", (5000, 3000), (10, 200, 30)), "JPEG"),
    "dogs/big.png": encode_as(Image.new("L", (2400, 1200), 200), "PNG"),
    "dogs/big_rotated.jpg": _rotated_jpeg(3000, 1000, orientation=6),
    "dogs/bomb.png": png_claiming(100_000, 100_000),
    "dogs/empty.jpg": b"",
    "dogs/truncated.jpg": GOOD_JPEG[: len(GOOD_JPEG) // 2],
    "dogs/error_page.jpg": b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n",
    "dogs/note.png": b"this is not a picture, just some words\n",
    "dogs/random.jpg": np.random.default_rng(3).bytes(300),
    "dogs/bad_header.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    "dogs/iphone.jpg": b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40,
    "dogs/png_named.jpg": GOOD_PNG,
    "cats/.DS_Store": b"\x00\x00\x00\x01Bud1",
    "cats/Thumbs.db": b"\xd0\xcf\x11\xe0",
    "desktop.ini": b"[.ShellClassInfo]\n",
    "__MACOSX/cats/._plain.jpg": b"\x00\x05\x16\x07",
    "cats/.hidden.jpg": GOOD_JPEG,
    ".git/config": b"[core]\n",
    "cats/notes.txt": b"some notes\n",
    "cats/README": b"readme\n",
    "stray.jpg": GOOD_JPEG,
    "notes.txt": b"top level notes\n",
}


def build_zoo(root: Path) -> None:
    """Writes the zoo under `root`, plus its links and a class folder kept elsewhere."""
    for relative, data in ZOO.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # A real file sorted after its symlink: the real path must win.
    (root / "cats" / "zz_real.jpg").write_bytes(encode_as(noise(8, 8, seed=9), "JPEG"))
    os.symlink("zz_real.jpg", root / "cats" / "aa_link.jpg")
    os.symlink("plain.jpg", root / "cats" / "link_to_plain.jpg")
    os.symlink("missing.jpg", root / "cats" / "broken.jpg")
    os.symlink(".", root / "cats" / "loop")  # Folder link to itself.
    os.symlink("..", root / "cats" / "deep" / "up")  # Folder link to its parent.
    os.symlink(str(root), root / "dogs" / "root_again")  # Link to the root.
    os.link(root / "cats" / "plain.png", root / "dogs" / "hardlink.png")
    elsewhere = root.parent / f"{root.name}_elsewhere" / "birds_store"
    elsewhere.mkdir(parents=True)
    (elsewhere / "robin.png").write_bytes(encode_as(noise(6, 6, seed=4), "PNG"))
    os.symlink(str(elsewhere), root / "birds")  # Class folder kept elsewhere.



def ingest_zoo(root: Path) -> dict[str, IngestedFile]:
    """Every path the walk finds under `root`, ingested with the default settings."""
    found = list(itertools.islice(walk_image_folder(str(root)), 1000))
    assert len(found) < 1000, "walk did not terminate"
    results = {f.relative_path: ingest_file(f) for f in found}
    assert len(results) == len(found), "a path was yielded twice"
    return results


def decoded(result: IngestedFile) -> Image.Image:
    """The image an outcome carries, decoded by Pillow (its format checked)."""
    image = Image.open(io.BytesIO(result.image_bytes))
    assert image.format.lower() == result.image_format
    image.load()
    return image


def ingested_zoo(folder: Path) -> dict[str, IngestedFile]:
    """The zoo built under `folder/images` and ingested: relative path -> outcome."""
    root = folder / "images"
    root.mkdir()
    build_zoo(root)
    return ingest_zoo(root)
