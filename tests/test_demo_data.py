"""The demo folder builder writes real labelled images, one folder per class."""

from PIL import Image

from pipeline import demo_data


def test_digits_become_a_class_per_folder_image_folder(tmp_path):
    images, labels = demo_data.load_digits()
    assert len(images) == len(labels) == 1797
    count = demo_data.write_image_folder(images[:30], labels[:30], str(tmp_path), size=32)
    assert count == 30
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == sorted(set(labels[:30]))
    with Image.open(next((tmp_path / labels[0]).iterdir())) as image:
        assert image.size == (32, 32) and image.mode == "RGB"


def test_fashion_mnist_is_optional(tmp_path):
    assert demo_data.find_fashion_mnist(str(tmp_path)) is None
