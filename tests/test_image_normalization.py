"""components/image_normalization.py: what becomes of each kind of image, and of non-images."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from components.config import IngestConfig
from components.file_outcome import FileStatus, IngestedFile
from components.image_normalization import UnusableImage, normalize_image
from tests.image_zoo import (
    GOOD_JPEG,
    GOOD_PNG,
    RED,
    ZOO,
    decoded,
    encode_as,
    ingested_zoo,
    noise,
    png_claiming,
)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, IngestedFile]:
    return ingested_zoo(tmp_path_factory.mktemp("zoo"))


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
    jpeg = encode_as(noise(640, 480, seed=3), "JPEG", quality=90)
    with pytest.raises(UnusableImage, match="truncated or corrupt image"):
        normalize_image(jpeg[:-missing], IngestConfig())
    normalized = normalize_image(jpeg, IngestConfig())
    assert normalized == (jpeg, "jpeg", 640, 480, "", (640, 480))


@pytest.mark.parametrize("progressive", [False, True])
def test_pass_through_check_fails_exactly_when_a_full_decode_fails(progressive):
    """Random damage (flipped bytes, cuts, gaps) is judged alike at 1/8 and full scale."""
    import random

    jpeg = encode_as(noise(160, 120, seed=4), "JPEG", quality=90, progressive=progressive)
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
            normalize_image(bytes(damaged), IngestConfig())
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
    red, green, blue = decoded(result).getpixel((8, 6))
    assert red > 200 and green < 60 and blue < 60  # C=0 M=Y=100%: red.


def test_grayscale_is_expanded_to_rgb(zoo):
    for path, fmt in (("cats/gray.png", "png"), ("cats/gray.jpg", "jpeg")):
        result = zoo[path]
        assert result.status is FileStatus.CONVERTED
        assert result.reason == "converted: grayscale (L) to RGB"
        assert result.image_format == fmt
    assert decoded(zoo["cats/gray.png"]).getpixel((5, 5)) == (77, 77, 77)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(zoo):
    result = zoo["cats/sixteen.png"]
    assert result.status is FileStatus.CONVERTED
    assert "16-bit grayscale (I;16) to 8-bit RGB" in result.reason
    assert decoded(result).getpixel((3, 3)) == (0x80, 0x80, 0x80)
    pgm = zoo["cats/sixteen.pgm"]
    assert pgm.status is FileStatus.CONVERTED
    assert pgm.image_format == "png"
    assert decoded(pgm).getpixel((1, 1)) == (0xC0, 0xC0, 0xC0)


def test_palette_with_transparency_is_composited_on_white(zoo):
    result = zoo["cats/palette.png"]
    assert result.status is FileStatus.CONVERTED
    assert result.reason == "converted: palette image with transparency composited on white"
    image = decoded(result)
    assert image.getpixel((1, 1)) == (255, 255, 255)
    assert image.getpixel((6, 1)) == RED
    opaque = zoo["cats/palette_opaque.gif"]
    assert opaque.status is FileStatus.CONVERTED
    assert "palette image to RGB" in opaque.reason


def test_rgba_transparent_pixels_become_white_not_black(zoo):
    result = zoo["cats/rgba.png"]
    assert result.status is FileStatus.CONVERTED
    assert result.reason == "converted: RGBA alpha composited on white"
    image = decoded(result)
    assert image.getpixel((1, 1)) == (255, 255, 255)
    assert image.getpixel((6, 1)) == RED
    half_blue = decoded(zoo["cats/scan.tiff"]).getpixel((4, 4))
    assert half_blue[0] == pytest.approx(127, abs=6) and half_blue[2] > 245


def test_exif_orientation_is_applied(zoo):
    result = zoo["cats/rotated.jpg"]
    assert result.status is FileStatus.CONVERTED
    assert result.reason == "converted: applied EXIF orientation 6"
    assert (result.width, result.height) == (20, 40)
    image = decoded(result)
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
    assert decoded(result).getpixel((8, 8)) == RED
    apng = zoo["cats/animated.png"]
    assert apng.status is FileStatus.CONVERTED
    assert apng.reason == "converted: first frame of multi-frame PNG"
    assert decoded(apng).getpixel((4, 4)) == RED


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
    assert decoded(result).size == (1024, 614)

    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        answer = real_draft(self, mode, size)
        drafts.append(answer)
        return answer

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    normalize_image(ZOO["dogs/big.jpg"], IngestConfig())
    # Decoded at 1/4 scale: the 5000x3000 pixels are never decoded at full size.
    assert [box[2:] for _, box in drafts] == [(1250, 750)]


def test_large_png_and_rotated_large_jpeg_are_downscaled(zoo):
    png = zoo["dogs/big.png"]
    assert (png.width, png.height) == (1024, 512)
    assert png.reason == "converted: downscaled 2400x1200 to 1024x512; grayscale (L) to RGB"
    rotated = zoo["dogs/big_rotated.jpg"]
    assert (rotated.width, rotated.height) == (341, 1024)
    assert "applied EXIF orientation 6" in rotated.reason


def test_max_side_setting():
    normalized = normalize_image(GOOD_JPEG, IngestConfig(max_side=32))
    assert (normalized.image_format, normalized.width, normalized.height) == ("jpeg", 32, 21)
    assert normalized.note == "downscaled 48x32 to 32x21"
    assert normalized.source_size == (48, 32)


def test_every_image_decodes_with_pillow_as_8bit_rgb(zoo):
    images = [r for r in zoo.values() if r.status in (FileStatus.KEPT, FileStatus.CONVERTED)]
    assert len(images) >= 25
    for result in images:
        assert result.image_format in ("jpeg", "png")
        image = decoded(result)
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
        expected = np.asarray(decoded(result))
        if result.image_format == "png":
            np.testing.assert_array_equal(tensor.numpy(), expected)




# --------------------------------------------------------------------------
# Bytes that cannot become an image
# --------------------------------------------------------------------------


def test_bomb_is_refused_from_the_header_before_decoding(monkeypatch):
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: loads.append(1) or real_load(self)
    )
    normalize_image(GOOD_JPEG, IngestConfig())
    assert loads, "the spy must see ordinary decodes"
    loads.clear()
    expected = r"decompression bomb \(48x32 = 1536 pixels exceeds max_pixels 1000\)"
    with pytest.raises(UnusableImage, match=expected):
        normalize_image(GOOD_JPEG, IngestConfig(max_pixels=1000))
    assert not loads


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_between_pillow_warning_and_our_limit_and_global_untouched():
    before = Image.MAX_IMAGE_PIXELS
    expected = r"12000x10000 = 120000000 pixels exceeds max_pixels 100000000"
    with pytest.raises(UnusableImage, match=expected):
        normalize_image(png_claiming(12_000, 10_000), IngestConfig())
    with pytest.raises(UnusableImage, match="decompression bomb"):
        normalize_image(png_claiming(100_000, 100_000), IngestConfig(max_pixels=10**12))
    assert Image.MAX_IMAGE_PIXELS == before



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
                encoded = normalize_image(bytes(damaged), IngestConfig()).encoded
            except UnusableImage as error:
                assert str(error), "reason must not be empty"
                outcomes["unusable"] += 1
                continue
            outcomes["ok"] += 1
            with Image.open(io.BytesIO(encoded)) as image:
                image.load()
                assert image.mode == "RGB"
    assert outcomes["unusable"] > 0



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
            normalize_image(data, IngestConfig())
        assert str(caught.value).startswith(reason), (data[:20], str(caught.value))


