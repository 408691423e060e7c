"""The exported SavedModel: its signatures, its input checks, and its TFLite twin."""

import io
import json
import os
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import serving_testing
from tests.serving_testing import colour_image, labelled_example
from trainer import export, features
from trainer.config import ExportConfig


@pytest.fixture(scope="module")
def transform_output():
    return serving_testing.shared_transform_output()


@pytest.fixture(scope="module")
def exported(transform_output, tmp_path_factory):
    tf_transform_output, _ = transform_output
    export_dir = tmp_path_factory.mktemp("model") / "Format-Serving"
    serving_testing.export_tiny_model(
        export_dir, tf_transform_output, ExportConfig(max_image_pixels=10_000)
    )
    return tf.saved_model.load(str(export_dir))


def _serve(loaded, images):
    return loaded.signatures[export.SERVING_DEFAULT](
        **{export.IMAGE_BYTES_INPUT: tf.constant(images)}
    )


def _error(loaded, images) -> str:
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        _serve(loaded, tf.constant(images, tf.string))
    return caught.value.message


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring `width` x `height`, no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + b"\0" * 4


def _encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _gif(screen: tuple[int, int], frames: list[tuple[int, int]], blocks: bytes = b"",
         end: bytes = b"\x3b") -> bytes:
    """A GIF by hand: a `screen` (width, height), `blocks`, then one image descriptor
    per frame (width, height) with a few bytes of (not valid) LZW data, then `end`."""
    gif = b"GIF89a" + struct.pack("<HHBBB", *screen, 0, 0, 0) + blocks
    for width, height in frames:
        gif += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x03abc\x00"
    return gif + end


def _with_small_screen(gif: bytes) -> bytes:
    """`gif` declaring a 1x1 logical screen (its frames unchanged)."""
    return gif[:6] + struct.pack("<HH", 1, 1) + gif[10:]


def test_signatures_serve_raw_bytes_and_examples(exported):
    assert set(exported.signatures) == {
        export.SERVING_DEFAULT, export.SERVING_EXAMPLES, export.TRANSFORM_FEATURES
    }
    blue = colour_image("blue", seed=1, image_format="JPEG")
    served = _serve(exported, [blue, blue])
    np.testing.assert_allclose(served[export.SCORES_OUTPUT].numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert served[export.CLASSES_OUTPUT].numpy().tolist() == [[b"red", b"green", b"blue"]] * 2
    assert served[export.LABEL_OUTPUT].shape == (2,)
    top = served[export.SCORES_OUTPUT].numpy()[0].argmax()
    assert served[export.LABEL_OUTPUT].numpy()[0] == [b"red", b"green", b"blue"][top]

    example = labelled_example(blue, "blue")
    by_example = exported.signatures[export.SERVING_EXAMPLES](examples=tf.constant([example]))
    np.testing.assert_allclose(
        by_example[export.SCORES_OUTPUT].numpy()[0], served[export.SCORES_OUTPUT].numpy()[0],
        rtol=1e-5,
    )
    transformed = exported.signatures[export.TRANSFORM_FEATURES](examples=tf.constant([example]))
    assert transformed[features.TRANSFORMED_LABEL_KEY].numpy().tolist() == [2]


def test_serving_transforms_images_exactly_as_transform_did(exported, transform_output):
    _, rows = transform_output
    examples = [
        labelled_example(colour_image(label, n, "PNG" if n % 2 else "JPEG"), label)
        for n, label in enumerate(serving_testing.LABELS)
    ]
    served = exported.signatures[export.TRANSFORM_FEATURES](examples=tf.constant(examples))
    np.testing.assert_array_equal(
        served[features.TRANSFORMED_IMAGE_KEY].numpy(),
        np.stack([row[features.TRANSFORMED_IMAGE_KEY] for row in rows]),
    )


def test_only_the_variables_are_saved_not_the_keras_layers(exported):
    assert not hasattr(exported, "classifier")
    assert len(exported.classifier_variables) == 8  # conv, batch norm (4), dense


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        ([b""], "image_bytes[0]: empty input (0 bytes)"),
        (["ok", b"<html>404</html>"], "image_bytes[1]: not an image"),
        ([b"%PDF-1.4 not an image"], "not JPEG, PNG, GIF or BMP"),
        ([_png_header(60_000, 60_000)], "image_bytes[0]: image too large: 3600000000 pixels"),
        (["ok", "big"], "image_bytes[1]: image too large: 40000 pixels declared, over the "
                        "pixel budget of 10000"),
        ([_png_header(0, 10)], "corrupt image header: 0 pixels"),
        ([b"\xff\xd8\xff\xe0 truncated"], "image_bytes[0]: truncated JPEG: the data ends inside "
                                          "its header"),
    ],
    ids=["empty", "html", "pdf", "png-bomb", "jpeg-over-budget", "zero-size", "bad-jpeg"],
)
def test_bad_inputs_fail_with_a_message_naming_image_and_problem(exported, images, expected):
    stand_ins = {
        "ok": colour_image("red", seed=3),
        "big": _encoded(Image.new("RGB", (200, 200), (9, 9, 9)), "JPEG"),
    }
    images = [stand_ins.get(image, image) for image in images]
    assert expected in _error(exported, images)


def test_gif_bmp_and_grayscale_images_within_budget_are_served(exported):
    images = [
        _encoded(Image.new("P", (50, 40), 3), "GIF"),
        _encoded(Image.new("RGB", (60, 30), (200, 30, 30)), "BMP"),
        _encoded(Image.new("L", (64, 64), 128), "PNG"),
    ]
    served = _serve(exported, images)
    assert served[export.SCORES_OUTPUT].shape == (3, 3)


@pytest.mark.parametrize(
    ("gif", "expected"),
    [
        (_gif((1, 1), [(12000, 12000)]), "image_bytes[0]: image too large: 144000000 pixels "
                                         "declared, over the pixel budget of 10000"),
        (_gif((50, 50), [(50, 50)] * 5), "image_bytes[0]: image too large: 12500 pixels"),
        (_gif((10, 10), [(100, 20), (20, 100)]), "image too large: 20000 pixels"),
        (_gif((8, 8), [(8, 8)], end=b"\x99"), "image_bytes[0]: corrupt image header: the GIF "
                                               "block structure is malformed or cut short"),
        (_gif((8, 8), [(8, 8)], end=b"")[:-3], "block structure is malformed or cut short"),
        (_gif((8, 8), [(8, 0)]), "block structure is malformed or cut short"),
        (_gif((8, 8), [(8, 8)], blocks=b"\x21\xfe\x00" * 3000),
         "image_bytes[0]: GIF too complex to check: its blocks take more than 4096 steps"),
        (_gif((8, 8), []), "image_bytes[0]: corrupt image header: 0 pixels declared"),
    ],
    ids=["huge-frame-small-screen", "many-frames", "widest-and-tallest", "unknown-block",
         "cut-short", "empty-frame", "too-many-blocks", "no-frame"],
)
def test_gif_budget_counts_every_frame_the_decoder_allocates(exported, gif, expected):
    assert expected in _error(exported, [gif])


def test_a_decodable_gif_with_a_small_screen_and_a_large_frame_is_refused(exported):
    gif = _with_small_screen(_encoded(Image.new("L", (200, 200), 7), "GIF"))
    # TensorFlow's decoder ignores the screen: it would allocate the whole frame.
    assert tf.io.decode_gif(gif).shape == (1, 200, 200, 3)

    assert "image_bytes[1]: image too large: 40000 pixels declared" in _error(
        exported, [colour_image("red", seed=3), gif]
    )


def test_animated_gif_within_budget_is_served(exported):
    frames = [Image.new("L", (40, 40), shade) for shade in (10, 120, 240)]
    gif = _with_small_screen(_encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    assert tf.io.decode_gif(gif).shape == (3, 40, 40, 3)

    assert _serve(exported, [gif])[export.SCORES_OUTPUT].shape == (1, 3)


def _jpeg_with_thumbnail(size: int) -> bytes:
    """A JPEG whose APP1 segment holds a complete small JPEG (as camera EXIF does)."""
    photo = _encoded(Image.new("RGB", (size, size), (200, 30, 30)), "JPEG")
    thumbnail = _encoded(Image.new("RGB", (8, 8), (30, 30, 200)), "JPEG")
    app1 = b"Exif\0\0" + thumbnail
    return photo[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + photo[2:]


def test_a_truncated_jpeg_is_named_by_its_index_in_the_batch(exported):
    whole = _jpeg_with_thumbnail(90)
    assert _serve(exported, [whole])[export.SCORES_OUTPUT].shape == (1, 3)
    ok = colour_image("red", seed=3, image_format="JPEG")

    assert "image_bytes[2]: truncated JPEG: the data ends before its end-of-image marker" in (
        _error(exported, [ok, ok, whole[: len(whole) - 100]])
    )
    assert "image_bytes[1]: truncated JPEG: the data ends inside its header" in _error(
        exported, [ok, whole[:300]]
    )


def test_a_jpeg_with_data_after_its_end_is_served(exported):
    # E.g. a motion photo's video: bytes after the image, here holding a scan marker.
    jpeg = colour_image("blue", seed=4, image_format="JPEG") + b"\xff\xda trailer"
    assert _serve(exported, [jpeg])[export.SCORES_OUTPUT].shape == (1, 3)


def test_examples_signature_checks_images_too(exported):
    example = labelled_example(_png_header(50_000, 50_000), "red")
    with pytest.raises(tf.errors.InvalidArgumentError, match="examples.image\\[0\\]: image too"):
        exported.signatures[export.SERVING_EXAMPLES](examples=tf.constant([example]))
    example = labelled_example(_gif((1, 1), [(12000, 12000)]), "red")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="examples.image\\[0\\]: image too large: 144000000 pixels"):
        exported.signatures[export.SERVING_EXAMPLES](examples=tf.constant([example]))


def test_tflite_model_agrees_with_the_saved_model(transform_output, tmp_path):
    tf_transform_output, _ = transform_output
    export_dir = tmp_path / "model"
    test_images = [colour_image(label, 100 + n) for n, label in enumerate(serving_testing.LABELS)]
    serving_testing.export_tiny_model(
        export_dir, tf_transform_output, ExportConfig(tflite=True),
        tflite_check_images=test_images,
    )

    tflite_path = export_dir / export.ASSETS_EXTRA / export.TFLITE_FILE
    assert tflite_path.stat().st_size > 0
    info = json.loads((export_dir / export.ASSETS_EXTRA / export.TFLITE_INFO_FILE).read_text())
    assert info["classes"] == ["red", "green", "blue"]
    assert info["input_shape"] == [1, 32, 32, 3]
    other_images = [colour_image("green", 500 + n, "JPEG") for n in range(3)]
    difference = export.tflite_max_difference(str(export_dir), tf_transform_output, other_images)
    assert difference <= export.DEFAULT_TFLITE_TOLERANCE
    assert os.path.exists(export_dir / "saved_model.pb")


def test_a_disagreeing_tflite_model_fails_the_export_by_name(transform_output, tmp_path):
    tf_transform_output, _ = transform_output
    export_dir = str(tmp_path / "model")  # a copy: the export below writes into it
    shutil.copytree(serving_testing.shared_tiny_model(), export_dir)
    other_weights = serving_testing.tiny_classifier(seed=1)  # not the model that was saved

    with pytest.raises(export.ExportError, match=r"disagrees with the SavedModel.*"
                       r"training\.export\.tflite_tolerance=0\.001"):
        export.export_tflite(other_weights, tf_transform_output, export_dir)
    assert not os.path.exists(os.path.join(export_dir, export.ASSETS_EXTRA, export.TFLITE_FILE))


def test_impossible_export_settings_are_refused_before_saving(transform_output, tmp_path):
    tf_transform_output, _ = transform_output
    with pytest.raises(ValueError, match="export.max_image_pixels must be at least 1, got 0"):
        serving_testing.export_tiny_model(
            tmp_path / "model", tf_transform_output, ExportConfig(max_image_pixels=0)
        )
    assert not (tmp_path / "model").exists()


def test_training_record_is_kept_beside_the_model(transform_output, tmp_path):
    tf_transform_output, _ = transform_output
    record = {"config": {"backbone": "mobilenet_v2"}, "history": {"unfrozen_layers": ["a"]}}
    export_dir = serving_testing.export_tiny_model(
        tmp_path / "model", tf_transform_output, training_record=record
    )
    assert export.read_training_record(export_dir) == record
    assert export.read_training_record(str(tmp_path)) == {}


def test_an_empty_batch_is_refused_by_name(exported):
    assert "image_bytes: an empty batch (no images)" in _error(exported, [])
