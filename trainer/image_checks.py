"""In-graph checks of encoded images, run by every serving signature before any decode.

`check_encoded_images` refuses, naming the image's index in its batch, an
empty input, bytes that are not a JPEG, PNG, GIF or BMP, a header that cannot
be read, and an image the decoder would allocate more pixels for than the
model's budget, so a server never decodes (or runs out of memory on) a
decompression bomb. Everything here is TensorFlow ops, saved in the
SavedModel's signatures, so TF Serving applies the same checks.

What is read, per format:

- PNG and BMP: the size in the fixed header.
- JPEG: the marker segments of the header are walked by their lengths up to
  the first scan; data that ends inside them, or that has no end-of-image
  marker after the scan starts, is a truncated JPEG (TensorFlow's decoder
  fails on both, for the whole batch). The size is libjpeg's, from
  `tf.image.extract_jpeg_shape`. Bytes the walk does not recognise end it,
  as libjpeg skips them; the end-of-image marker is then looked for after them.
- GIF: TensorFlow's decoder ignores the screen size. It decodes every frame and
  sizes its output by the widest and the tallest frame, so the check walks
  every block (extensions and image descriptors, their data skipped by the
  sub-block length bytes) and counts frames x largest width x largest height.
  A block structure that is malformed or cut short is refused as a corrupt
  header; so is a GIF with more blocks than the walk may take steps
  (`_MAX_GIF_STEPS`), which cannot be bounded cheaply.

JPEG and PNG pay for none of the GIF walk: each image takes only its own
format's branch.
"""

from __future__ import annotations

import tensorflow as tf

# Formats `transform.decode_images` decodes, by their first bytes.
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GIF_MAGICS = (b"GIF87a", b"GIF89a")
_BMP_MAGIC = b"BM"
_HEADER_BYTES = 32

_MAX_GIF_STEPS = 4096
"""Most steps of the GIF walk (a block, or a run of equal-length sub-blocks)."""
_MAX_JPEG_SEGMENTS = 1024
"""Most marker segments walked before a JPEG's first scan."""
_RUN_WINDOW = 256
"""Most equal-length GIF sub-blocks skipped in one step."""

# What the per-format walks found, as an index into _PROBLEMS.
_OK, _GIF_BROKEN, _GIF_TOO_COMPLEX, _JPEG_HEADER_CUT, _JPEG_NO_END = range(5)
_PROBLEMS = (
    "",
    "corrupt image header: the GIF block structure is malformed or cut short",
    f"GIF too complex to check: its blocks take more than {_MAX_GIF_STEPS} steps",
    "truncated JPEG: the data ends inside its header",
    "truncated JPEG: the data ends before its end-of-image marker",
)
# How each image is read, the branch index of `_walk_one`.
_OTHER, _JPEG_ENDED, _JPEG, _GIF = range(4)


def check_encoded_images(
    image_bytes: tf.Tensor, max_pixels: int, input_name: str | tf.Tensor
) -> tf.Tensor:
    """`image_bytes` once every image is known safe to decode.

    Args:
        image_bytes: String tensor [batch] of encoded images.
        max_pixels: Most pixels the decoder may allocate for one image
            (width x height; for a GIF, frames x largest width x largest height).
        input_name: Named in error messages, e.g. ``image_bytes[3]: ...``; a
            string or a scalar string tensor.

    Returns:
        `image_bytes`, computed only after the checks passed.

    Raises:
        tf.errors.InvalidArgumentError: (when run) the batch or an image is empty, is not a
            JPEG, PNG, GIF or BMP, has a corrupt header, is a truncated JPEG, or
            declares more pixels than `max_pixels`.
    """
    formats = _formats(image_bytes)
    known = tf.reduce_any(list(formats.values()), axis=0)
    empty = tf.equal(tf.strings.length(image_bytes), 0)
    checks = [
        tf.debugging.Assert(
            tf.size(image_bytes) > 0,
            [tf.strings.join([input_name, ": an empty batch (no images)"])],
        ),
        _assert_none(empty, input_name, "empty input (0 bytes)"),
        _assert_none(
            tf.logical_and(tf.logical_not(empty), tf.logical_not(known)),
            input_name,
            "not an image: the bytes are not JPEG, PNG, GIF or BMP data",
        ),
    ]
    with tf.control_dependencies(checks):
        pixels, problem = _declared_pixels(image_bytes, formats)
        checks.append(
            _assert_none(problem > _OK, input_name, tf.gather(tf.constant(_PROBLEMS), problem))
        )
    with tf.control_dependencies(checks):
        checks += [
            _assert_none(
                pixels > max_pixels,
                input_name,
                tf.strings.join(
                    ["image too large: ", tf.strings.as_string(pixels),
                     f" pixels declared, over the pixel budget of {max_pixels}"]
                ),
            ),
            _assert_none(
                tf.equal(pixels, 0), input_name, "corrupt image header: 0 pixels declared"
            ),
        ]
    with tf.control_dependencies(checks):
        return tf.identity(image_bytes)


def _formats(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
    """Whether each image is a JPEG, PNG, GIF or BMP, by its first bytes: bool [n] each."""
    prefix = tf.strings.substr(image_bytes, 0, 8)
    return {
        "jpeg": tf.strings.substr(prefix, 0, 3) == _JPEG_MAGIC,
        "png": prefix == _PNG_MAGIC,
        "gif": tf.reduce_any(
            [tf.strings.substr(prefix, 0, 6) == magic for magic in _GIF_MAGICS], axis=0
        ),
        "bmp": tf.strings.substr(prefix, 0, 2) == _BMP_MAGIC,
    }


def _assert_none(
    bad: tf.Tensor, input_name: str | tf.Tensor, problem: str | tf.Tensor
) -> tf.Operation:
    """Fails naming the first bad image (`input_name[i]`) when any is bad."""
    # The first bad index (0 for an empty batch, refused on its own).
    first = tf.argmax(tf.concat([tf.cast(bad, tf.int32), [1]], 0), output_type=tf.int32)
    if isinstance(problem, tf.Tensor):
        problem = tf.gather(tf.concat([problem, [""]], 0), first)
    message = tf.strings.join([input_name, "[", tf.strings.as_string(first), "]: ", problem])
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message])


# ------------------------------------------------------------ fixed headers


def _header_bytes(image_bytes: tf.Tensor) -> tf.Tensor:
    """The first `_HEADER_BYTES` bytes of each image, zero-padded: int64 [n, 32]."""
    padding = tf.fill(tf.shape(image_bytes), b"\0" * _HEADER_BYTES)
    head = tf.strings.join([tf.strings.substr(image_bytes, 0, _HEADER_BYTES), padding])
    head = tf.strings.substr(head, 0, _HEADER_BYTES)
    return tf.reshape(tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64), [-1, _HEADER_BYTES])


def _big_endian(header: tf.Tensor, start: int, size: int) -> tf.Tensor:
    value = tf.zeros_like(header[:, 0])
    for offset in range(start, start + size):
        value = value * 256 + header[:, offset]
    return value


def _little_endian(header: tf.Tensor, start: int, size: int) -> tf.Tensor:
    return _big_endian(header[:, ::-1], _HEADER_BYTES - start - size, size)


def _declared_pixels(
    image_bytes: tf.Tensor, formats: dict[str, tf.Tensor]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pixels the decoder would allocate for each image (int64 [n]), and the problem found.

    The problem is an index into `_PROBLEMS` (int32 [n]); an image with a
    problem declares 0 pixels.
    """
    header = _header_bytes(image_bytes)
    png = _big_endian(header, 16, 4) * _big_endian(header, 20, 4)
    # BMP: a 12-byte core header has 16-bit sizes; the others 32-bit (height
    # negative for top-down rows).
    core = tf.equal(_little_endian(header, 14, 4), 12)
    bmp_height = _little_endian(header, 22, 4)
    bmp_height = tf.where(bmp_height >= 2**31, 2**32 - bmp_height, bmp_height)
    bmp = tf.where(
        core,
        _little_endian(header, 18, 2) * _little_endian(header, 20, 2),
        _little_endian(header, 18, 4) * bmp_height,
    )
    pixels = tf.where(formats["png"], png, tf.zeros_like(png))
    pixels = tf.where(formats["bmp"], bmp, pixels)
    # Most JPEGs end with their end-of-image marker: nothing was cut off them.
    ended = tf.equal(tf.strings.substr(image_bytes, -2, 2), b"\xff\xd9")
    walk = tf.where(
        formats["jpeg"], tf.where(ended, _JPEG_ENDED, _JPEG),
        tf.where(formats["gif"], _GIF, _OTHER),
    )
    walked, problem = tf.map_fn(
        _walk_one,
        (image_bytes, walk),
        fn_output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int32)),
    )
    return tf.where(walk == _OTHER, pixels, walked), problem


def _walk_one(args: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """(pixels, problem) of one image by its format's walk; (0, _OK) for PNG and BMP."""
    encoded, walk = args
    return tf.switch_case(walk, [
        lambda: (tf.constant(0, tf.int64), tf.constant(_OK)),
        lambda: (_jpeg_pixels(encoded), tf.constant(_OK)),
        lambda: _walk_jpeg(encoded),
        lambda: _walk_gif(encoded),
    ])


class _Bytes:
    """One encoded image as bytes that can be read at any offset (0 past the end)."""

    def __init__(self, encoded: tf.Tensor) -> None:
        self.data = tf.io.decode_raw(encoded, tf.uint8)
        self.size = tf.size(self.data)
        self.padded = tf.pad(self.data, [[0, 1]])

    def __getitem__(self, offset: tf.Tensor) -> tf.Tensor:
        """The byte at `offset` as int32; 0 at or past the end."""
        return tf.cast(tf.gather(self.padded, tf.minimum(offset, self.size)), tf.int32)

    def little_endian16(self, offset: tf.Tensor) -> tf.Tensor:
        return self[offset] + 256 * self[offset + 1]


# -------------------------------------------------------------------- JPEG

_JPEG_WALKING, _JPEG_STOPPED, _JPEG_CUT = range(3)
_SOS, _EOI = 0xDA, 0xD9


def _jpeg_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """Height x width, as libjpeg reads them from the header."""
    return tf.reduce_prod(tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64))


def _walk_jpeg(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(height x width, _OK), or (0, the truncation found), for a JPEG not ending in EOI."""
    problem = _jpeg_truncation(encoded)
    pixels = tf.cond(
        tf.equal(problem, _OK), lambda: _jpeg_pixels(encoded), lambda: tf.constant(0, tf.int64)
    )
    return pixels, problem


def _jpeg_truncation(encoded: tf.Tensor) -> tf.Tensor:
    """_JPEG_HEADER_CUT, _JPEG_NO_END or _OK: the header's segments walked by their lengths."""
    data = _Bytes(encoded)

    def step(offset: tf.Tensor, state: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        code = data[offset + 1]
        length = data[offset + 2] * 256 + data[offset + 3]
        fill = tf.equal(code, 0xFF)
        standalone = tf.logical_or(tf.equal(code, 0x01), (code >= 0xD0) & (code <= 0xD7))
        # SOS, EOI and a stuffed zero end the walk; the others have a length.
        ends = tf.equal(code, _SOS) | tf.equal(code, _EOI) | tf.equal(code, 0)
        segment = ~(fill | standalone | ends)
        following = tf.where(
            fill, offset + 1, tf.where(standalone, offset + 2, offset + 2 + length)
        )
        state = tf.where(
            offset + 2 > data.size, _JPEG_CUT,
            tf.where(tf.not_equal(data[offset], 0xFF) | ends, _JPEG_STOPPED,
            tf.where(segment & ((offset + 4 > data.size) | (following > data.size)), _JPEG_CUT,
            tf.where(segment & (length < 2), _JPEG_STOPPED, _JPEG_WALKING))))
        return tf.where(tf.equal(state, _JPEG_WALKING), following, offset), state

    offset, state = tf.while_loop(
        lambda offset, state: tf.equal(state, _JPEG_WALKING), step,
        (tf.constant(2), tf.constant(_JPEG_WALKING)), maximum_iterations=_MAX_JPEG_SEGMENTS,
    )
    # Past the header (or what the walk could not read), only the end-of-image
    # marker can hold "FF D9": scan data stuffs every FF byte.
    rest = data.data[offset:]
    ended = tf.reduce_any(tf.equal(rest[:-1], 0xFF) & tf.equal(rest[1:], _EOI))
    return tf.where(
        tf.equal(state, _JPEG_CUT), _JPEG_HEADER_CUT, tf.where(ended, _OK, _JPEG_NO_END)
    )


# --------------------------------------------------------------------- GIF

_GIF_RUNNING, _GIF_DONE, _GIF_CUT = range(3)
_EXTENSION, _IMAGE, _TRAILER = 0x21, 0x2C, 0x3B


def _colour_table_bytes(flags: tf.Tensor) -> tf.Tensor:
    """Size of the colour table a GIF screen or image descriptor's flags announce."""
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2), flags % 8), 0)


def _walk_gif(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(frames x largest width x largest height, _OK), or (0, the problem found)."""
    data = _Bytes(encoded)

    def block(offset: tf.Tensor) -> tuple:
        """At a block's first byte: where its sub-blocks start, its state, its frame size."""
        kind = data[offset]
        image = tf.equal(kind, _IMAGE)
        width, height = data.little_endian16(offset + 5), data.little_endian16(offset + 7)
        # An image descriptor is 10 bytes, its colour table, the LZW code size.
        start = tf.where(image, offset + 11 + _colour_table_bytes(data[offset + 9]), offset + 2)
        valid = (image & (width > 0) & (height > 0)) | tf.equal(kind, _EXTENSION)
        state = tf.where(
            (offset >= data.size) | tf.equal(kind, _TRAILER), _GIF_DONE,
            tf.where(valid & (start < data.size), _GIF_RUNNING, _GIF_CUT),
        )
        return start, state, image & (offset < data.size), width, height

    def sub_blocks(offset: tf.Tensor) -> tuple:
        """At a length byte: past the run of sub-blocks of that length, or the terminator."""
        length = data[offset]
        stride = length + 1
        lengths = tf.strided_slice(data.data, [offset], [offset + stride * _RUN_WINDOW], [stride])
        same = tf.cast(tf.equal(tf.cast(lengths, tf.int32), length), tf.int32)
        run = tf.argmin(tf.concat([same, [0]], 0), output_type=tf.int32)
        following = tf.where(tf.equal(length, 0), offset + 1, offset + run * stride)
        return following, tf.where(offset >= data.size, _GIF_CUT, _GIF_RUNNING), length > 0

    def step(offset, in_data, state, frames, width, height):
        start, block_state, image, frame_width, frame_height = block(offset)
        following, data_state, more = sub_blocks(offset)
        new_frame = ~in_data & image
        return (
            tf.where(in_data, following, start),
            tf.where(in_data, more, tf.equal(block_state, _GIF_RUNNING)),
            tf.where(in_data, data_state, block_state),
            frames + tf.cast(new_frame, tf.int64),
            tf.where(new_frame, tf.maximum(width, frame_width), width),
            tf.where(new_frame, tf.maximum(height, frame_height), height),
        )

    # The screen descriptor is 13 bytes, then its colour table.
    start = 13 + _colour_table_bytes(data[10])
    _, _, state, frames, width, height = tf.while_loop(
        lambda offset, in_data, state, *_: tf.equal(state, _GIF_RUNNING),
        step,
        (start, tf.constant(False), tf.where(start > data.size, _GIF_CUT, _GIF_RUNNING),
         tf.constant(0, tf.int64), tf.constant(0), tf.constant(0)),
        maximum_iterations=_MAX_GIF_STEPS,
    )
    problem = tf.where(
        tf.equal(state, _GIF_CUT), _GIF_BROKEN,
        tf.where(tf.equal(state, _GIF_RUNNING), _GIF_TOO_COMPLEX, _OK),
    )
    pixels = frames * tf.cast(width, tf.int64) * tf.cast(height, tf.int64)
    return tf.where(tf.equal(problem, _OK), pixels, 0), problem
