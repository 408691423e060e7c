"""Tests for components/image_files.py: every awkward file an image folder holds."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from components import file_systems, image_files
from components.image_files import (
    FileStatus,
    FoundFile,
    IngestedFile,
    IngestOptions,
    UnusableImage,
    ignore_reason,
    ingest_file,
    normalize_image,
    sha256_file,
    walk_image_folder,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


# --------------------------------------------------------------------------
# Builders for awkward files
# --------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    array = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(array if channels > 1 else array[..., 0], mode=mode)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_claiming(width: int, height: int) -> bytes:
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
    return _encode(image, "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _palette_png_with_transparency() -> bytes:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0] + list(RED) + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 4, 8))  # Left half uses the transparent index 0.
    return _encode(image, "PNG", transparency=0)


def _rgba_png() -> bytes:
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 4, 8))  # Transparent *black* left half.
    return _encode(image, "PNG")


def _sixteen_bit_png(value: int) -> bytes:
    array = np.full((8, 8), value, dtype=np.uint16)
    image = Image.fromarray(array)
    assert image.mode == "I;16"
    return _encode(image, "PNG")


def _pgm16(value: int) -> bytes:
    return b"P5\n4 4\n65535\n" + struct.pack(">H", value) * 16


GOOD_JPEG = _encode(_noise(48, 32), "JPEG", quality=90)
GOOD_PNG = _encode(_noise(40, 30), "PNG")

# relative path -> bytes; None for entries made specially (links, folders).
ZOO: dict[str, bytes] = {
    "cats/plain.jpg": GOOD_JPEG,
    "cats/plain.png": GOOD_PNG,
    "cats/progressive.jpg": _encode(_noise(30, 20), "JPEG", progressive=True),
    "cats/upright.jpg": _rotated_jpeg(30, 20, orientation=1),
    "cats/animated.png": _encode(
        Image.new("RGB", (8, 8), RED), "PNG", save_all=True,
        append_images=[Image.new("RGB", (8, 8), BLUE)],
    ),
    "cats/deep/nested/photo.jpeg": _encode(_noise(20, 20, seed=1), "JPEG"),
    "cats/cmyk.jpg": _encode(Image.new("CMYK", (16, 12), (0, 255, 255, 0)), "JPEG"),
    "cats/gray.png": _encode(Image.new("L", (10, 10), 77), "PNG"),
    "cats/gray.jpg": _encode(Image.new("L", (10, 10), 77), "JPEG"),
    "cats/sixteen.png": _sixteen_bit_png(0x8040),
    "cats/sixteen.pgm": _pgm16(0xC0FF),
    "cats/palette.png": _palette_png_with_transparency(),
    "cats/palette_opaque.gif": _encode(Image.new("P", (8, 8), 0), "GIF"),
    "cats/rgba.png": _rgba_png(),
    "cats/rotated.jpg": _rotated_jpeg(40, 20, orientation=6),
    "cats/animated.gif": _animated_gif(),
    "cats/lossy.webp": _encode(_noise(24, 24), "WEBP", quality=80),
    "cats/lossless.webp": _encode(_noise(24, 24), "WEBP", lossless=True),
    "cats/scan.tif": _encode(_noise(24, 16), "TIFF"),
    "cats/scan.tiff": _encode(Image.new("RGBA", (8, 8), (0, 0, 255, 128)), "TIFF"),
    "cats/drawing.bmp": _encode(_noise(12, 12), "BMP"),
    "cats/icon.ico": _encode(Image.new("RGBA", (32, 32), (0, 255, 0, 255)), "ICO"),
    "cats/frame.ppm": _encode(_noise(9, 7), "PPM"),
    "dogs/big.jpg": _encode(Image.new("RGB", (5000, 3000), (10, 200, 30)), "JPEG"),
    "dogs/big.png": _encode(Image.new("L", (2400, 1200), 200), "PNG"),
    "dogs/big_rotated.jpg": _rotated_jpeg(3000, 1000, orientation=6),
    "dogs/bomb.png": _png_claiming(100_000, 100_000),
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


def _build_zoo(root: Path) -> None:
    for relative, data in ZOO.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # A real file sorted after its symlink: the real path must win.
    (root / "cats" / "zz_real.jpg").write_bytes(_encode(_noise(8, 8, seed=9), "JPEG"))
    os.symlink("zz_real.jpg", root / "cats" / "aa_link.jpg")
    os.symlink("plain.jpg", root / "cats" / "link_to_plain.jpg")
    os.symlink("missing.jpg", root / "cats" / "broken.jpg")
    os.symlink(".", root / "cats" / "loop")  # Folder link to itself.
    os.symlink("..", root / "cats" / "deep" / "up")  # Folder link to its parent.
    os.symlink(str(root), root / "dogs" / "root_again")  # Link to the root.
    os.link(root / "cats" / "plain.png", root / "dogs" / "hardlink.png")
    elsewhere = root.parent / f"{root.name}_elsewhere" / "birds_store"
    elsewhere.mkdir(parents=True)
    (elsewhere / "robin.png").write_bytes(_encode(_noise(6, 6, seed=4), "PNG"))
    os.symlink(str(elsewhere), root / "birds")  # Class folder kept elsewhere.


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo") / "images"
    root.mkdir()
    _build_zoo(root)
    return root


@pytest.fixture(scope="module")
def zoo(zoo_root: Path) -> dict[str, IngestedFile]:
    found = list(itertools.islice(walk_image_folder(str(zoo_root)), 1000))
    assert len(found) < 1000, "walk did not terminate"
    results = {f.relative_path: ingest_file(f) for f in found}
    assert len(results) == len(found), "a path was yielded twice"
    return results


def _decoded(result: IngestedFile) -> Image.Image:
    image = Image.open(io.BytesIO(result.image_bytes))
    assert image.format.lower() == result.image_format
    image.load()
    return image


# --------------------------------------------------------------------------
# Walking
# --------------------------------------------------------------------------


def test_walk_accounts_for_every_path_once_and_terminates(zoo, zoo_root):
    expected = set(ZOO) | {
        "cats/zz_real.jpg",
        "cats/aa_link.jpg",
        "cats/link_to_plain.jpg",
        "cats/broken.jpg",
        "dogs/hardlink.png",
        "birds/robin.png",
    }
    assert set(zoo) == expected


def test_walk_is_deterministic_and_physical_files_come_first(zoo_root):
    first = [f.relative_path for f in walk_image_folder(str(zoo_root))]
    second = [f.relative_path for f in walk_image_folder(str(zoo_root))]
    assert first == second
    # Phase 1: the physical tree, sorted depth-first; phase 2: links in the
    # order found ("birds" is a folder link at the root, so it comes first).
    physical = first[: first.index("birds/robin.png")]
    assert "cats/zz_real.jpg" in physical
    assert physical == sorted(physical, key=lambda p: p.split("/"))
    assert first[len(physical):] == [
        "birds/robin.png",
        "cats/aa_link.jpg",
        "cats/broken.jpg",
        "cats/link_to_plain.jpg",
    ]


def test_walk_found_file_fields(zoo_root, tmp_path, monkeypatch):
    found = {f.relative_path: f for f in walk_image_folder(str(zoo_root))}
    nested = found["cats/deep/nested/photo.jpeg"]
    assert nested.label == "cats"
    assert nested.path == os.path.join(str(zoo_root), "cats", "deep", "nested", "photo.jpeg")
    assert found["stray.jpg"].label is None
    assert found["birds/robin.png"].label == "birds"
    assert found["birds/robin.png"].path == os.path.join(str(zoo_root), "birds", "robin.png")
    assert found["cats/aa_link.jpg"].same_file_as == "cats/zz_real.jpg"
    assert found["cats/zz_real.jpg"].same_file_as is None
    # A relative root gives absolute paths too.
    monkeypatch.chdir(zoo_root.parent)
    relative = next(iter(walk_image_folder(zoo_root.name)))
    assert os.path.isabs(relative.path)


def test_walk_only_follows_each_real_folder_once(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(GOOD_JPEG)
    os.symlink("a", root / "a_alias")
    os.symlink("../..", root / "a" / "grandparent")
    found = [f.relative_path for f in walk_image_folder(str(root))]
    assert found == ["a/x.jpg"]


def test_walk_unlistable_folder_raises_by_default_or_calls_on_error(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "dogs" / "d.jpg").write_bytes(GOOD_JPEG)
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(path) == "cats":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PermissionError):
        list(walk_image_folder(str(root)))
    errors: list[OSError] = []
    found = list(walk_image_folder(str(root), on_error=errors.append))
    assert [f.relative_path for f in found] == ["dogs/d.jpg"]
    assert len(errors) == 1 and errors[0].filename.endswith("cats")


def test_walk_streams(tmp_path):
    walker = walk_image_folder(str(tmp_path))
    assert iter(walker) is walker  # A generator, not a list.


# --------------------------------------------------------------------------
# Ignoring
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative_path", "reason"),
    [
        ("cats/.DS_Store", "ignored: system file"),
        ("cats/Thumbs.db", "ignored: system file"),
        ("cats/thumbs.DB", "ignored: system file"),
        ("desktop.ini", "ignored: system file"),
        ("__MACOSX/cats/._a.jpg", "ignored: system file"),
        ("cats/.hidden.jpg", "ignored: hidden file"),
        (".git/config", "ignored: hidden file"),
        ("cats/.thumbnails/a.jpg", "ignored: hidden file"),
        ("cats/notes.txt", "ignored: not an image file (.txt)"),
        ("cats/README", "ignored: not an image file (no extension)"),
        ("cats/clip.MP4", "ignored: not an image file (.mp4)"),
        ("notes.txt", "ignored: not an image file (.txt)"),
        ("stray.jpg", "ignored: not inside a class folder"),
        ("cats/a.JPG", None),
        ("cats/deep/a.jpe", None),
        ("cats/a.pgm", None),
    ],
)
def test_ignore_reason(relative_path, reason):
    assert ignore_reason(relative_path) == reason


def test_ignored_files_are_not_read(zoo, monkeypatch):
    for path in ("cats/.DS_Store", "cats/Thumbs.db", "desktop.ini", "cats/.hidden.jpg",
                 ".git/config", "cats/notes.txt", "stray.jpg", "__MACOSX/cats/._plain.jpg"):
        assert zoo[path].status is FileStatus.IGNORED, path
        assert zoo[path].content_hash == ""
        assert zoo[path].image_bytes == b""
    assert zoo["stray.jpg"].reason == "ignored: not inside a class folder"
    assert zoo["cats/notes.txt"].reason == "ignored: not an image file (.txt)"

    def no_open(*args, **kwargs):
        raise AssertionError("ignored file was opened")

    monkeypatch.setattr(image_files, "open", no_open, raising=False)
    result = ingest_file(FoundFile("/nonexistent/cats/.DS_Store", "cats/.DS_Store", "cats"))
    assert result.reason == "ignored: system file"


def test_prefixed_relative_paths_keep_their_outcome(tmp_path):
    """The component prefixes relative paths with the split folder."""
    root = tmp_path / "train"
    (root / "cats").mkdir(parents=True)
    (root / "stray.jpg").write_bytes(GOOD_JPEG)
    (root / "cats" / "a.jpg").write_bytes(GOOD_JPEG)
    results = {}
    for found in walk_image_folder(str(root)):
        prefixed = FoundFile(found.path, f"train/{found.relative_path}", found.label)
        results[prefixed.relative_path] = ingest_file(prefixed)
    assert results["train/stray.jpg"].reason == "ignored: not inside a class folder"
    assert results["train/cats/a.jpg"].status is FileStatus.KEPT


def test_links_to_counted_files_are_ignored(zoo):
    link = zoo["cats/aa_link.jpg"]
    assert link.status is FileStatus.IGNORED
    assert link.reason == "ignored: symlink to a file already counted (cats/zz_real.jpg)"
    assert zoo["cats/zz_real.jpg"].status is FileStatus.KEPT
    assert zoo["cats/link_to_plain.jpg"].reason == (
        "ignored: symlink to a file already counted (cats/plain.jpg)"
    )
    assert zoo["dogs/hardlink.png"].reason == (
        "ignored: same file already counted as cats/plain.png"
    )
    assert zoo["birds/robin.png"].status is FileStatus.KEPT


# --------------------------------------------------------------------------
# Kept and converted images
# --------------------------------------------------------------------------


def test_plain_rgb_jpeg_is_kept_byte_for_byte(zoo):
    result = zoo["cats/plain.jpg"]
    assert result.status is FileStatus.KEPT
    assert result.reason == ""
    assert result.image_bytes == GOOD_JPEG
    assert result.content_hash == hashlib.sha256(GOOD_JPEG).hexdigest()
    assert (result.image_format, result.width, result.height) == ("jpeg", 48, 32)
    for path in ("cats/deep/nested/photo.jpeg", "cats/progressive.jpg", "cats/upright.jpg"):
        assert zoo[path].status is FileStatus.KEPT, path
        assert zoo[path].image_bytes == ZOO[path]


@pytest.mark.parametrize("missing", [2, 40, 400])
def test_pass_through_jpeg_missing_its_end_is_skipped(missing):
    """The cheap 1/8-scale check still decodes every block: a cut anywhere is caught."""
    jpeg = _encode(_noise(640, 480, seed=3), "JPEG", quality=90)
    with pytest.raises(UnusableImage, match="truncated or corrupt image"):
        normalize_image(jpeg[:-missing], IngestOptions())
    encoded, image_format, width, height, note = normalize_image(jpeg, IngestOptions())
    assert (encoded, image_format, width, height, note) == (jpeg, "jpeg", 640, 480, "")


@pytest.mark.parametrize("progressive", [False, True])
def test_pass_through_check_fails_exactly_when_a_full_decode_fails(progressive):
    """Random damage (flipped bytes, cuts, gaps) is judged alike at 1/8 and full scale."""
    import random

    jpeg = _encode(_noise(160, 120, seed=4), "JPEG", quality=90, progressive=progressive)
    shuffle = random.Random(progressive)
    outcomes = set()
    for n in range(60):
        damaged = bytearray(jpeg)
        if n % 3 == 0:
            for _ in range(shuffle.randint(1, 20)):
                damaged[shuffle.randrange(len(damaged))] = shuffle.randrange(256)
        elif n % 3 == 1:
            damaged = damaged[: shuffle.randrange(len(damaged))]
        else:
            start = shuffle.randrange(len(damaged))
            damaged = damaged[:start] + damaged[start + shuffle.randint(1, 200):]
        try:
            with Image.open(io.BytesIO(bytes(damaged))) as image:
                image.load()
            full_decode = "ok"
        except Exception:  # noqa: BLE001 (any failure counts)
            full_decode = "fails"
        try:
            normalize_image(bytes(damaged), IngestOptions())
            ours = "ok"
        except UnusableImage:
            ours = "fails"
        assert ours == full_decode, n
        outcomes.add(ours)
    assert outcomes == {"ok", "fails"}


def test_rgb_png_is_kept_even_with_a_jpg_name(zoo):
    for path in ("cats/plain.png", "dogs/png_named.jpg"):
        result = zoo[path]
        assert result.status is FileStatus.KEPT, path
        assert result.image_bytes == GOOD_PNG
        assert (result.image_format, result.width, result.height) == ("png", 40, 30)


def test_cmyk_jpeg_is_converted_to_rgb(zoo):
    result = zoo["cats/cmyk.jpg"]
    assert result.status is FileStatus.CONVERTED
    assert result.reason == "converted: CMYK JPEG to RGB"
    assert result.image_format == "jpeg"
    red, green, blue = _decoded(result).getpixel((8, 6))
    assert red > 200 and green < 60 and blue < 60  # C=0 M=Y=100%: red.


def test_grayscale_is_expanded_to_rgb(zoo):
    for path, fmt in (("cats/gray.png", "png"), ("cats/gray.jpg", "jpeg")):
        result = zoo[path]
        assert result.status is FileStatus.CONVERTED
        assert result.reason == "converted: grayscale (L) to RGB"
        assert result.image_format == fmt
    assert _decoded(zoo["cats/gray.png"]).getpixel((5, 5)) == (77, 77, 77)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(zoo):
    result = zoo["cats/sixteen.png"]
    assert result.status is FileStatus.CONVERTED
    assert "16-bit grayscale (I;16) to 8-bit RGB" in result.reason
    assert _decoded(result).getpixel((3, 3)) == (0x80, 0x80, 0x80)
    pgm = zoo["cats/sixteen.pgm"]
    assert pgm.status is FileStatus.CONVERTED
    assert pgm.image_format == "png"
    assert _decoded(pgm).getpixel((1, 1)) == (0xC0, 0xC0, 0xC0)


def test_palette_with_transparency_is_composited_on_white(zoo):
    result = zoo["cats/palette.png"]
    assert result.status is FileStatus.CONVERTED
    assert result.reason == "converted: palette image with transparency composited on white"
    image = _decoded(result)
    assert image.getpixel((1, 1)) == (255, 255, 255)
    assert image.getpixel((6, 1)) == RED
    opaque = zoo["cats/palette_opaque.gif"]
    assert opaque.status is FileStatus.CONVERTED
    assert "palette image to RGB" in opaque.reason


def test_rgba_transparent_pixels_become_white_not_black(zoo):
    result = zoo["cats/rgba.png"]
    assert result.status is FileStatus.CONVERTED
    assert result.reason == "converted: RGBA alpha composited on white"
    image = _decoded(result)
    assert image.getpixel((1, 1)) == (255, 255, 255)
    assert image.getpixel((6, 1)) == RED
    half_blue = _decoded(zoo["cats/scan.tiff"]).getpixel((4, 4))
    assert half_blue[0] == pytest.approx(127, abs=6) and half_blue[2] > 245


def test_exif_orientation_is_applied(zoo):
    result = zoo["cats/rotated.jpg"]
    assert result.status is FileStatus.CONVERTED
    assert result.reason == "converted: applied EXIF orientation 6"
    assert (result.width, result.height) == (20, 40)
    image = _decoded(result)
    assert image.size == (20, 40)
    assert image.getexif().get(0x0112) is None  # No second rotation later.
    # Orientation 6 = rotate 90 degrees clockwise: the blue top-left corner
    # of the stored image ends up top-right.
    red, green, blue = image.getpixel((18, 2))
    assert blue > 200 and red < 60


def test_animated_gif_keeps_first_frame(zoo):
    result = zoo["cats/animated.gif"]
    assert result.status is FileStatus.CONVERTED
    assert "first frame of multi-frame GIF" in result.reason
    assert "GIF re-encoded as PNG" in result.reason
    assert result.image_format == "png"
    assert _decoded(result).getpixel((8, 8)) == RED
    apng = zoo["cats/animated.png"]
    assert apng.status is FileStatus.CONVERTED
    assert apng.reason == "converted: first frame of multi-frame PNG"
    assert _decoded(apng).getpixel((4, 4)) == RED


@pytest.mark.parametrize(
    ("path", "fmt", "words"),
    [
        ("cats/lossy.webp", "jpeg", "WEBP re-encoded as JPEG"),
        ("cats/lossless.webp", "png", "WEBP re-encoded as PNG"),
        ("cats/scan.tif", "jpeg", "TIFF re-encoded as JPEG"),
        ("cats/drawing.bmp", "png", "BMP re-encoded as PNG"),
        ("cats/icon.ico", "png", "ICO re-encoded as PNG"),
        ("cats/frame.ppm", "png", "PPM re-encoded as PNG"),
    ],
)
def test_other_containers_are_re_encoded(zoo, path, fmt, words):
    result = zoo[path]
    assert result.status is FileStatus.CONVERTED
    assert result.reason.startswith("converted: ") and words in result.reason
    assert result.image_format == fmt


def test_large_jpeg_is_downscaled_through_draft(zoo, monkeypatch):
    result = zoo["dogs/big.jpg"]
    assert result.status is FileStatus.CONVERTED
    assert result.reason == "converted: downscaled 1250x750 to 1024x614"
    assert (result.width, result.height) == (1024, 614)
    assert _decoded(result).size == (1024, 614)

    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        answer = real_draft(self, mode, size)
        drafts.append(answer)
        return answer

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    normalize_image(ZOO["dogs/big.jpg"], IngestOptions())
    # Decoded at 1/4 scale: the 5000x3000 pixels are never decoded at full size.
    assert [box[2:] for _, box in drafts] == [(1250, 750)]


def test_large_png_and_rotated_large_jpeg_are_downscaled(zoo):
    png = zoo["dogs/big.png"]
    assert (png.width, png.height) == (1024, 512)
    assert png.reason == "converted: downscaled 2400x1200 to 1024x512; grayscale (L) to RGB"
    rotated = zoo["dogs/big_rotated.jpg"]
    assert (rotated.width, rotated.height) == (341, 1024)
    assert "applied EXIF orientation 6" in rotated.reason


def test_max_side_option():
    encoded, fmt, width, height, note = normalize_image(GOOD_JPEG, IngestOptions(max_side=32))
    assert (fmt, width, height) == ("jpeg", 32, 21)
    assert note == "downscaled 48x32 to 32x21"


def test_every_image_decodes_with_pillow_as_8bit_rgb(zoo):
    images = [r for r in zoo.values() if r.status in (FileStatus.KEPT, FileStatus.CONVERTED)]
    assert len(images) >= 25
    for result in images:
        assert result.image_format in ("jpeg", "png")
        image = _decoded(result)
        assert image.mode == "RGB", result.relative_path
        assert image.size == (result.width, result.height), result.relative_path
        assert max(image.size) <= 1024
        assert np.asarray(image).dtype == np.uint8


def test_every_image_decodes_with_tensorflow(zoo):
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    for result in zoo.values():
        if result.status not in (FileStatus.KEPT, FileStatus.CONVERTED):
            continue
        tensor = tf.io.decode_image(result.image_bytes, channels=3, expand_animations=False)
        assert tensor.dtype == tf.uint8
        assert tuple(tensor.shape) == (result.height, result.width, 3), result.relative_path
        expected = np.asarray(_decoded(result))
        if result.image_format == "png":
            np.testing.assert_array_equal(tensor.numpy(), expected)


# --------------------------------------------------------------------------
# Skipped files
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason_start"),
    [
        ("dogs/empty.jpg", "skipped: empty file (0 bytes)"),
        (
            "dogs/truncated.jpg",
            "skipped: truncated or corrupt image (OSError: image file is truncated",
        ),
        ("dogs/error_page.jpg", "skipped: not an image: looks like HTML"),
        ("dogs/note.png", "skipped: not an image: looks like plain text"),
        ("dogs/random.jpg", "skipped: not an image: unrecognised binary data"),
        (
            "dogs/bad_header.png",
            "skipped: truncated or corrupt image (PNG signature, unreadable header)",
        ),
        ("dogs/iphone.jpg", "skipped: unsupported image format: HEIC"),
        ("dogs/bomb.png", "skipped: decompression bomb (Image size (10000000000 pixels)"),
        ("cats/broken.jpg", "skipped: broken symlink (FileNotFoundError"),
    ],
)
def test_bad_files_are_skipped_with_specific_reasons(zoo, path, reason_start):
    result = zoo[path]
    assert result.status is FileStatus.SKIPPED
    assert result.reason.startswith(reason_start), result.reason
    assert (result.image_bytes, result.image_format, result.width, result.height) == (b"", "", 0, 0)


def test_skipped_files_still_carry_their_hash(zoo):
    assert zoo["dogs/empty.jpg"].content_hash == hashlib.sha256(b"").hexdigest()
    truncated = ZOO["dogs/truncated.jpg"]
    assert zoo["dogs/truncated.jpg"].content_hash == hashlib.sha256(truncated).hexdigest()
    assert zoo["cats/broken.jpg"].content_hash == ""


def test_bomb_is_refused_from_the_header_before_decoding(monkeypatch):
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: loads.append(1) or real_load(self)
    )
    normalize_image(GOOD_JPEG, IngestOptions())
    assert loads, "the spy must see ordinary decodes"
    loads.clear()
    expected = r"decompression bomb \(48x32 = 1536 pixels exceeds max_pixels 1000\)"
    with pytest.raises(UnusableImage, match=expected):
        normalize_image(GOOD_JPEG, IngestOptions(max_pixels=1000))
    assert not loads


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_between_pillow_warning_and_our_limit_and_global_untouched():
    before = Image.MAX_IMAGE_PIXELS
    expected = r"12000x10000 = 120000000 pixels exceeds max_pixels 100000000"
    with pytest.raises(UnusableImage, match=expected):
        normalize_image(_png_claiming(12_000, 10_000), IngestOptions())
    with pytest.raises(UnusableImage, match="decompression bomb"):
        normalize_image(_png_claiming(100_000, 100_000), IngestOptions(max_pixels=10**12))
    assert Image.MAX_IMAGE_PIXELS == before


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    path = tmp_path / "cats" / "locked.jpg"
    path.parent.mkdir()
    path.write_bytes(GOOD_JPEG)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(file_systems, "open", denied, raising=False)  # Root ignores chmod.
    result = ingest_file(FoundFile(str(path), "cats/locked.jpg", "cats"))
    assert result.status is FileStatus.SKIPPED
    assert result.reason == "skipped: unreadable file (PermissionError: Permission denied)"
    assert result.content_hash == ""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_skipped_without_blocking(tmp_path):
    path = tmp_path / "cats" / "pipe.jpg"
    path.parent.mkdir()
    os.mkfifo(path)
    result = ingest_file(FoundFile(str(path), "cats/pipe.jpg", "cats"))
    assert result.reason == "skipped: not a regular file"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_damaged_images_only_ever_raise_unusable_image():
    rng = np.random.default_rng(7)
    samples = [ZOO[p] for p in ("cats/plain.jpg", "cats/plain.png", "cats/animated.gif",
                                "cats/lossy.webp", "cats/scan.tif", "cats/drawing.bmp",
                                "cats/icon.ico", "cats/sixteen.png")]
    outcomes = {"ok": 0, "unusable": 0}
    for data in samples:
        for trial in range(12):
            damaged = bytearray(data)
            if trial % 2:
                damaged = damaged[: rng.integers(1, len(damaged))]
            else:
                for index in rng.integers(0, len(damaged), size=3):
                    damaged[index] = rng.integers(0, 256)
            try:
                encoded, _, _, _, _ = normalize_image(bytes(damaged), IngestOptions())
            except UnusableImage as error:
                assert str(error), "reason must not be empty"
                outcomes["unusable"] += 1
                continue
            outcomes["ok"] += 1
            with Image.open(io.BytesIO(encoded)) as image:
                image.load()
                assert image.mode == "RGB"
    assert outcomes["unusable"] > 0


def test_ingest_file_never_raises_even_on_unexpected_errors(tmp_path, monkeypatch):
    path = tmp_path / "cats" / "a.png"
    path.parent.mkdir()
    path.write_bytes(GOOD_PNG)

    def explode(data, options):
        raise RuntimeError("boom")

    monkeypatch.setattr(image_files, "_normalize", explode)
    result = ingest_file(FoundFile(str(path), "cats/a.png", "cats"))
    assert result.status is FileStatus.SKIPPED
    assert result.reason == "skipped: unexpected error decoding image (RuntimeError: boom)"
    assert result.content_hash == hashlib.sha256(GOOD_PNG).hexdigest()


def test_text_sniffing():
    cases = {
        b"\xef\xbb\xbf  <html><head>": "not an image: looks like HTML",
        b'<?xml version="1.0"?><svg xmlns="x">': "not an image: looks like SVG",
        b"<?xml version='1.0'?><feed>": "not an image: looks like XML",
        b'{"error": "not found"}': "not an image: looks like JSON",
        b"%PDF-1.7 ...": "not an image: looks like a PDF document",
        b"BMW owners club\n": "not an image: looks like plain text",
        ("caf\u00e9 " * 1000).encode(): "not an image: looks like plain text",
    }
    for data, reason in cases.items():
        with pytest.raises(UnusableImage) as caught:
            normalize_image(data, IngestOptions())
        assert str(caught.value).startswith(reason), (data[:20], str(caught.value))


# --------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (IngestOptions(max_side=0), "max_side must be >= 32, got 0"),
        (IngestOptions(max_pixels=0), "max_pixels must be >= 1, got 0"),
        (IngestOptions(jpeg_quality=101), "jpeg_quality must be <= 100, got 101"),
        (IngestOptions(jpeg_quality=True), "jpeg_quality must be an int, got True"),
    ],
)
def test_options_validate(options, message):
    with pytest.raises(ValueError, match=message):
        options.validate()
    with pytest.raises(ValueError, match=message):
        ingest_file(FoundFile("/x/cats/a.jpg", "cats/a.jpg", "cats"), options)


def test_defaults_are_valid_and_frozen():
    options = IngestOptions()
    options.validate()
    with pytest.raises(AttributeError):
        options.max_side = 5  # type: ignore[misc]
    assert FileStatus.KEPT == "kept"


def test_sha256_file(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(3000)
    path.write_bytes(data)
    assert sha256_file(str(path), chunk=1000) == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# Screening, then settling copies of one content together
# --------------------------------------------------------------------------


def _found(root: Path, relative: str, data: bytes, split: str = "") -> FoundFile:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    parts = relative.split("/")
    label = parts[1] if split else parts[0]
    return FoundFile(str(path), relative, label, split=split)


def test_screen_file_hashes_without_decoding(tmp_path, monkeypatch):
    good = _found(tmp_path, "cats/a.jpg", GOOD_JPEG)
    hidden = _found(tmp_path, "cats/.a.jpg", GOOD_JPEG)
    missing = FoundFile(str(tmp_path / "cats" / "gone.jpg"), "cats/gone.jpg", "cats")

    def no_decoding(*args, **kwargs):
        raise AssertionError("screening decoded an image")

    monkeypatch.setattr(image_files, "_normalize", no_decoding)
    screened = image_files.screen_file(good)
    assert screened.content_hash == hashlib.sha256(GOOD_JPEG).hexdigest()
    assert screened.outcome is None
    assert image_files.screen_file(hidden).outcome.reason == "ignored: hidden file"
    unreadable = image_files.screen_file(missing).outcome
    assert unreadable.status is FileStatus.SKIPPED
    assert unreadable.reason.startswith("skipped: unreadable file (FileNotFoundError")


def test_copies_are_decoded_once_first_is_kept_rest_are_duplicates(tmp_path, monkeypatch):
    copies = [_found(tmp_path, f"cats/{name}.jpg", GOOD_JPEG) for name in ("b", "a", "c")]
    decoded = []
    real_normalize = image_files._normalize
    monkeypatch.setattr(
        image_files, "_normalize",
        lambda data, options: decoded.append(1) or real_normalize(data, options),
    )

    outcomes = {o.relative_path: o for o in image_files.resolve_copies(copies)}

    assert len(decoded) == 1
    assert outcomes["cats/a.jpg"].status is FileStatus.KEPT
    assert outcomes["cats/a.jpg"].source_width == 48
    for path in ("cats/b.jpg", "cats/c.jpg"):
        assert outcomes[path].status is FileStatus.DUPLICATE
        assert outcomes[path].reason == "duplicate: same content as cats/a.jpg"
        assert outcomes[path].same_as == "cats/a.jpg" and not outcomes[path].leakage
        assert outcomes[path].image_bytes == b""


def test_unusable_copies_all_get_the_decoding_reason(tmp_path):
    copies = [_found(tmp_path, f"{label}/empty.jpg", b"") for label in ("cats", "dogs")]
    outcomes = list(image_files.resolve_copies(copies))
    # Not a label conflict: two empty files say nothing about labels.
    assert [o.reason for o in outcomes] == ["skipped: empty file (0 bytes)"] * 2


def test_copies_under_two_labels_are_a_conflict(tmp_path):
    copies = [_found(tmp_path, "cats/x.png", GOOD_PNG), _found(tmp_path, "dogs/x.png", GOOD_PNG)]
    outcomes = {o.relative_path: o for o in image_files.resolve_copies(copies)}
    assert outcomes["cats/x.png"].reason == (
        "skipped: label conflict: same content as dogs/x.png (dogs)")
    assert outcomes["dogs/x.png"].status is FileStatus.SKIPPED
    assert not any(o.image_bytes for o in outcomes.values())


def test_a_copy_in_another_given_split_is_leakage_kept_in_the_first_split(tmp_path):
    copies = [
        _found(tmp_path, "val/cats/x.jpg", GOOD_JPEG, split="eval"),
        _found(tmp_path, "train/cats/zz.jpg", GOOD_JPEG, split="train"),
        _found(tmp_path, "train/cats/aa.jpg", GOOD_JPEG, split="train"),
    ]
    outcomes = {o.relative_path: o for o in image_files.resolve_copies(
        copies, split_order=("train", "eval"))}
    assert outcomes["train/cats/aa.jpg"].status is FileStatus.KEPT
    assert outcomes["train/cats/aa.jpg"].split == "train"
    assert not outcomes["train/cats/zz.jpg"].leakage
    leaked = outcomes["val/cats/x.jpg"]
    assert leaked.status is FileStatus.DUPLICATE and leaked.leakage and leaked.split == "eval"
    assert leaked.reason == ("duplicate: same content as train/cats/aa.jpg "
                             "(leakage: the given splits train and eval share it)")


def test_a_known_hash_is_not_computed_again(tmp_path, monkeypatch):
    found = _found(tmp_path, "cats/a.jpg", GOOD_JPEG)
    screened = image_files.screen_file(found)
    expected = hashlib.sha256(GOOD_JPEG).hexdigest()

    def no_hashing(*args):
        raise AssertionError("hashed twice")

    monkeypatch.setattr(image_files.hashlib, "sha256", no_hashing)
    (outcome,) = image_files.resolve_copies([found], content_hash=screened.content_hash)
    assert outcome.status is FileStatus.KEPT
    assert outcome.content_hash == screened.content_hash == expected
