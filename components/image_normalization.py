"""Pillow normalisation: any image file's bytes to an 8-bit RGB JPEG or PNG that TensorFlow reads.

:func:`normalize_image` passes bytes through unchanged when TensorFlow's
``tf.io.decode_image`` already reads them exactly as Pillow does, converts
them otherwise (orientation, colour mode, bit depth, alpha, animation,
container format, size), and raises :class:`UnusableImage` with a reason for
bytes that cannot become an image (empty, truncated, not an image at all,
decompression bomb).

Pure Python (Pillow + numpy), and no module-level state is ever changed: in
particular ``PIL.Image.MAX_IMAGE_PIXELS`` is left alone.
"""

from __future__ import annotations

import io
import struct
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from components.config import IngestConfig
from trainer.errors import one_line

PILLOW_FORMATS: tuple[str, ...] = (
    "JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "ICO", "PPM",
)
"""The only Pillow decoders ever tried (MPO is reached through "JPEG").

Restricting the decoders keeps Pillow from handing a renamed file to a plugin
that shells out or parses exotic containers (EPS, PSD, ...).
"""

_PASS_THROUGH_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG"})
_LOSSLESS_FORMATS: frozenset[str] = frozenset({"PNG", "GIF", "BMP", "ICO", "PPM"})
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset(range(2, 9))
_RESIZABLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "I;16"})
_WHITE = (255, 255, 255)
_SNIFF_BYTES = 4096

# Exceptions Pillow raises (directly or from its C decoders) for bad data.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
    KeyError, struct.error, ZeroDivisionError,
)


class UnusableImage(ValueError):
    """Raised by :func:`normalize_image` when bytes cannot become an image.

    ``str(error)`` is the human readable reason without the ``"skipped: "``
    prefix, e.g. ``"not an image: looks like HTML"``.
    """


class NormalizedImage(NamedTuple):
    """What :func:`normalize_image` made of one file's bytes.

    Attributes:
        encoded: The JPEG or PNG bytes (the original bytes when passed through).
        image_format: ``"jpeg"`` or ``"png"``.
        width: Width of ``encoded``.
        height: Height of ``encoded``.
        note: The changes made, ``"; "``-separated; ``""`` when passed through.
        source_size: (width, height) as stored in the file, before any downscale.
    """

    encoded: bytes
    image_format: str
    width: int
    height: int
    note: str
    source_size: tuple[int, int]


def normalize_image(data: bytes, config: IngestConfig) -> NormalizedImage:
    """Turns file bytes into an 8-bit RGB JPEG or PNG that TensorFlow reads.

    Pass-through (note ``""``): the bytes are an 8-bit RGB JPEG (or MPO) or an
    8-bit truecolour PNG without transparency or animation, with no EXIF
    rotation to apply, no side above ``config.max_side``, and they decode
    completely (a JPEG's every entropy-coded block is decoded, at 1/8 scale:
    see :func:`_check_jpeg_decodes`). They are returned unchanged.

    Otherwise the first frame is decoded (JPEGs larger than needed are
    decoded at 1/2, 1/4 or 1/8 scale through ``draft``), then in order: EXIF
    orientation applied, downscaled (antialiased bilinear) so the longer side equals
    ``max_side``, and made 8-bit RGB (CMYK/YCCK to RGB, grayscale expanded,
    16-bit values shifted right by 8, palette and alpha composited on white).

    Output format rule: PNG if the source container is lossless (PNG, GIF,
    BMP, ICO, PPM/PGM, lossless WebP), else JPEG at ``config.jpeg_quality``
    (JPEG, lossy WebP, TIFF).

    Decompression bombs: the size is read from the header and checked
    against ``config.max_pixels`` before any pixel is decoded. Pillow's own
    process-wide guard (``Image.MAX_IMAGE_PIXELS``) is left untouched,
    because changing a module global, even briefly, races with other threads
    of a Beam worker. Its ``DecompressionBombError`` (and its warning, when
    warning filters turn it into an error) is reported as a bomb too, so the
    effective limit is the smaller of the two.

    Args:
        data: The complete original file bytes.
        config: Ingestion settings (validated here); ``max_side``,
            ``max_pixels`` and ``jpeg_quality`` apply.

    Returns:
        The encoded image, its format and size, the note listing the changes
        and the size stored in the file.

    Raises:
        UnusableImage: With the reason the bytes cannot be used.
    """
    config.validate()
    if not data:
        raise UnusableImage("empty file (0 bytes)")
    image = _open_image(data, config)
    source_size = image.size
    try:
        return NormalizedImage(*_normalize_open_image(image, data, config), source_size)
    finally:
        image.close()


def _open_image(data: bytes, config: IngestConfig) -> Image.Image:
    """Parses the header only and refuses decompression bombs.

    Raises:
        UnusableImage: If no allowed decoder recognises the bytes, or the
            header claims more than ``config.max_pixels`` pixels.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnusableImage(f"decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise UnusableImage(_describe_unidentified(data)) from error
    except _DECODE_ERRORS as error:
        raise UnusableImage(_corrupt_reason(error)) from error
    width, height = image.size
    if width * height > config.max_pixels:
        image.close()
        raise UnusableImage(
            f"decompression bomb ({width}x{height} = {width * height} pixels "
            f"exceeds max_pixels {config.max_pixels})"
        )
    if width < 1 or height < 1:
        image.close()
        raise UnusableImage(f"truncated or corrupt image (size {width}x{height})")
    return image


def _normalize_open_image(
    image: Image.Image, data: bytes, config: IngestConfig
) -> tuple[bytes, str, int, int, str]:
    """Decodes, checks and (if needed) converts an opened image."""
    source_format = image.format or ""
    notes = _frame_notes(image, source_format)  # Before decoding: may seek.
    target = _fit_within(image.size, config.max_side)
    if target is None and not notes and source_format in ("JPEG", "MPO"):
        # A JPEG's EXIF and colour mode are in its header: a pass-through
        # candidate is told before decoding, then only checked to decode.
        if _can_pass_through(image, data, _exif_orientation(image)):
            width, height = image.size
            _check_jpeg_decodes(image)
            return data, "jpeg", width, height, ""
    if target is not None and source_format in ("JPEG", "MPO"):
        image.draft("RGB", target)  # Decode at 1/2, 1/4 or 1/8 scale.
    _load(image)
    orientation = _exif_orientation(image)
    if target is None and not notes and _can_pass_through(image, data, orientation):
        image_format = "png" if source_format == "PNG" else "jpeg"
        return data, image_format, image.width, image.height, ""
    image_format = "png" if _encodes_as_png(source_format, data) else "jpeg"
    if source_format not in _PASS_THROUGH_FORMATS:
        notes.append(f"{source_format} re-encoded as {image_format.upper()}")
    if orientation in _TRANSPOSING_ORIENTATIONS:
        image = ImageOps.exif_transpose(image)
        notes.append(f"applied EXIF orientation {orientation}")
    resize_first = _resizes_safely(image)
    if not resize_first:
        image, mode_note = _to_rgb8(image, source_format, data)
    if target is not None:
        notes.append(_resize_note(image.size, config.max_side))
        image = _downscale(image, config.max_side)
    if resize_first:
        image, mode_note = _to_rgb8(image, source_format, data)
    if mode_note:
        notes.append(mode_note)
    if not notes:  # A pass-through candidate that failed a finer check.
        notes.append(f"{source_format} re-encoded as {image_format.upper()}")
    encoded = _encode(image, image_format, config.jpeg_quality)
    return encoded, image_format, image.width, image.height, "; ".join(notes)


def _load(image: Image.Image) -> None:
    """Fully decodes the current frame, mapping failures to UnusableImage."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnusableImage(f"decompression bomb ({error})") from error
    except _DECODE_ERRORS as error:
        raise UnusableImage(_corrupt_reason(error)) from error


def _check_jpeg_decodes(image: Image.Image) -> None:
    """Decodes a JPEG at 1/8 scale, the cheapest complete check libjpeg offers.

    DCT scaling skips only the inverse transform's detail and the colour
    conversion of full-size pixels: every entropy-coded block of the file is
    still decoded, so a truncated or corrupt stream fails here as it fails a
    full-size decode (800 random corruptions of baseline and progressive
    JPEGs gave the same outcome at both scales; a test keeps checking it).
    About twice as fast as a full decode of a photo.

    Raises:
        UnusableImage: The stream does not decode completely.
    """
    image.draft(image.mode, (1, 1))  # The largest reduction, 1/8.
    _load(image)


def _corrupt_reason(error: BaseException) -> str:
    """Reason text for a decoder failure."""
    return f"truncated or corrupt image ({one_line(error)})"


def _fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int] | None:
    """Target size with the longer side == max_side, or None if it fits."""
    width, height = size
    longer = max(width, height)
    if longer <= max_side:
        return None
    scale = max_side / longer
    return (
        max(1, min(max_side, round(width * scale))),
        max(1, min(max_side, round(height * scale))),
    )


def _exif_orientation(image: Image.Image) -> int:
    """EXIF orientation (1 when absent or unreadable)."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) else 1


def _can_pass_through(image: Image.Image, data: bytes, orientation: int) -> bool:
    """Whether the original bytes already decode in TF as Pillow sees them."""
    if orientation in _TRANSPOSING_ORIENTATIONS or image.mode != "RGB":
        return False
    if image.format in ("JPEG", "MPO"):
        return True
    if image.format == "PNG":
        return _png_bit_depth(data) == 8 and not image.has_transparency_data
    return False


def _png_bit_depth(data: bytes) -> int:
    """Bit depth from a PNG's IHDR chunk (0 if it cannot be read)."""
    if len(data) < 25 or data[12:16] != b"IHDR":
        return 0
    return data[24]


def _frame_notes(image: Image.Image, source_format: str) -> list[str]:
    """Notes that only the first frame of a multi-frame file is used."""
    if source_format in ("JPEG", "MPO"):
        return []  # Every JPEG decoder reads only the first MPO image.
    try:
        animated = bool(getattr(image, "is_animated", False))
        image.seek(0)
    except _DECODE_ERRORS as error:
        raise UnusableImage(_corrupt_reason(error)) from error
    return [f"first frame of multi-frame {source_format}"] if animated else []


def _resizes_safely(image: Image.Image) -> bool:
    """Whether resizing in the current mode is correct.

    Resizing before the RGB conversion keeps peak memory near one decoded
    frame; palette, bilevel and colour-keyed images must be expanded first.
    """
    return image.mode in _RESIZABLE_MODES and "transparency" not in image.info


def _resize_note(size: tuple[int, int], max_side: int) -> str:
    """Describes the downscale about to happen."""
    target = _fit_within(size, max_side) or size
    return f"downscaled {size[0]}x{size[1]} to {target[0]}x{target[1]}"


def _downscale(image: Image.Image, max_side: int) -> Image.Image:
    """Antialiased bilinear downscale so the longer side equals max_side.

    Pillow's bilinear filter widens with the scale factor, so it averages every
    source pixel (no aliasing). Not LANCZOS: the difference does not survive
    Transform's resize to the model's input, and LANCZOS costs twice as much,
    more than decoding the image (benchmarks/ingest.py).
    """
    target = _fit_within(image.size, max_side)
    if target is None:
        return image
    return image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _to_rgb8(
    image: Image.Image, source_format: str, data: bytes
) -> tuple[Image.Image, str]:
    """Converts any decoded mode to 8-bit RGB.

    Returns:
        The RGB image and a note on what changed (``""`` if nothing).

    Raises:
        UnusableImage: For pixel modes with no meaningful RGB rendering.
    """
    mode = image.mode
    if mode in ("P", "PA"):
        if image.has_transparency_data:
            note = "palette image with transparency composited on white"
            return _composite_on_white(image), note
        return image.convert("RGB"), "palette image to RGB"
    if image.has_transparency_data:
        return _composite_on_white(image), f"{mode} alpha composited on white"
    if mode == "RGB":
        if source_format == "PNG" and _png_bit_depth(data) == 16:
            return image, "16-bit PNG to 8-bit"
        return image, ""
    if mode == "CMYK":
        return image.convert("RGB"), f"CMYK {source_format} to RGB"
    if mode in ("L", "1"):
        return image.convert("RGB"), f"grayscale ({mode}) to RGB"
    if mode.startswith("I"):
        return _sixteen_bit_to_rgb(image), f"16-bit grayscale ({mode}) to 8-bit RGB"
    if mode == "F":
        raise UnusableImage("unsupported pixel mode F (floating point)")
    try:
        return image.convert("RGB"), f"{mode} to RGB"
    except ValueError as error:
        raise UnusableImage(f"unsupported pixel mode {mode}") from error


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Alpha-composites an image with transparency onto a white background."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """Maps 16-bit grayscale (``I;16*`` or ``I`` holding 0..65535) to RGB.

    Values are clipped to 0..65535 and shifted right by 8, so the full 16-bit
    range maps onto the full 8-bit range instead of saturating at 255.
    """
    values = np.asarray(image)
    if values.dtype.kind != "u" or values.dtype.itemsize != 2:
        values = np.clip(values, 0, 65535).astype(np.uint16)
    eight_bit = (values >> 8).astype(np.uint8)
    return Image.fromarray(eight_bit).convert("RGB")


def _encodes_as_png(source_format: str, data: bytes) -> bool:
    """Output rule: PNG for lossless sources, JPEG for the rest."""
    if source_format in _LOSSLESS_FORMATS:
        return True
    return source_format == "WEBP" and data[12:16] == b"VP8L"


def _encode(image: Image.Image, image_format: str, jpeg_quality: int) -> bytes:
    """Encodes an 8-bit RGB image as JPEG or PNG, without metadata."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue()

# --------------------------------------------------------------------------
# Describing bytes no decoder recognised
# --------------------------------------------------------------------------

_IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),  # Checked with its reserved zero bytes, see below.
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

_UNSUPPORTED_BRANDS: dict[bytes, str] = {
    b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF",
    b"avif": "AVIF", b"avis": "AVIF",
}

_OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
)


def _describe_unidentified(data: bytes) -> str:
    """Reason for bytes that no allowed Pillow decoder recognised."""
    for signature, name in _IMAGE_SIGNATURES:
        if data.startswith(signature) and (name != "BMP" or data[6:10] == bytes(4)):
            return f"truncated or corrupt image ({name} signature, unreadable header)"
    if data[4:8] == b"ftyp" and data[8:12] in _UNSUPPORTED_BRANDS:
        return f"unsupported image format: {_UNSUPPORTED_BRANDS[data[8:12]]}"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "truncated or corrupt image (WEBP signature, unreadable header)"
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature):
            return f"not an image: looks like {name}"
    return f"not an image: {_describe_text(data[:_SNIFF_BYTES])}"


def _describe_text(head: bytes) -> str:
    """Guesses what kind of text (if any) a file starts with."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # Not just a character cut at the end.
            return "unrecognised binary data"
        text = head[: error.start].decode("utf-8")
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if lowered.startswith("<!doctype html") or "<html" in lowered:
        return "looks like HTML"
    if "<svg" in lowered:
        return "looks like SVG (vector images are not supported)"
    if lowered.startswith("<"):
        return "looks like XML"
    if lowered.startswith("{"):
        return "looks like JSON"
    printable = sum(char.isprintable() or char in "\t\r\n" for char in text)
    if text and printable / len(text) > 0.95:
        return "looks like plain text"
    return "unrecognised binary data"


