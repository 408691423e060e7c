"""`transferline scan`: the ingestion rules on a messy folder, without training."""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from components import image_folder
from components.config import IngestConfig
from pipeline import cli, scan
from tests.conftest import CLASS_COLOURS, encode, make_image, write_class_folder


def _save(path, image, image_format, **params):
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    path.write_bytes(buffer.getvalue())


def build_messy_folder(root):
    """Three colour classes plus one of every awkward, broken and ignorable file."""
    write_class_folder(root, per_class=8)
    red, green, blue = (root / label for label in ("red", "green", "blue"))
    # Real images, awkward: each is converted.
    _save(red / "cmyk.jpg", make_image(CLASS_COLOURS["red"], 1).convert("CMYK"), "JPEG")
    _save(red / "sixteen.png", Image.fromarray(np.full((20, 20), 40000, np.uint16)), "PNG")
    _save(green / "alpha.png", make_image(CLASS_COLOURS["green"], 2).convert("RGBA"), "PNG")
    _save(green / "anim.gif", make_image(CLASS_COLOURS["green"], 3), "GIF", save_all=True,
          append_images=[make_image(CLASS_COLOURS["blue"], 4)])
    _save(blue / "photo.webp", make_image(CLASS_COLOURS["blue"], 5), "WEBP")
    _save(blue / "scan.tiff", make_image(CLASS_COLOURS["blue"], 6), "TIFF")
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(blue / "rotated.jpg", make_image(CLASS_COLOURS["blue"], 7), "JPEG", exif=exif.tobytes())
    _save(red / "nested" / "big.jpg", Image.new("RGB", (4200, 2100), CLASS_COLOURS["red"]), "JPEG")
    # Broken: each is skipped with a reason.
    (green / "empty.jpg").write_bytes(b"")
    (green / "truncated.jpg").write_bytes((red / "000.jpg").read_bytes()[:300])
    (blue / "error_page.jpg").write_bytes(b"<!DOCTYPE html><html>404</html>")
    (red / "words.png").write_text("not a picture")
    # Ignored.
    (red / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (green / "Thumbs.db").write_bytes(b"\xd0\xcf")
    (blue / ".hidden.jpg").write_bytes((blue / "000.jpg").read_bytes())
    (blue / "notes.txt").write_text("notes")
    (root / "stray.jpg").write_bytes((red / "000.jpg").read_bytes())
    os.symlink(".", red / "loop")
    os.symlink(red / "002.jpg", blue / "link_to_red.jpg")
    # Duplicates and a label conflict.
    shutil.copy(red / "004.jpg", red / "copy_of_004.jpg")
    shutil.copy(green / "005.png", blue / "green_in_blue.png")
    (root / "empty_class").mkdir()
    return root


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return build_messy_folder(tmp_path_factory.mktemp("scan") / "messy")


def test_scan_accounts_for_every_file_with_reasons(messy):
    report = scan.scan_folder(str(messy), workers=1)

    assert report["layout"] == "classes" and report["reconciles"]
    counts = report["by_status"]
    # 24 plain + 8 awkward + 4 broken + 6 ignored + 2 copies (the loop yields no file).
    assert report["files_seen"] == sum(counts.values()) == 44
    assert counts == {"kept": 23, "converted": 8, "skipped": 6, "ignored": 6, "duplicate": 1}
    assert report["images_per_class"] == {"blue": 11, "green": 9, "red": 11}
    skipped = {row["path"]: row["reason"] for row in report["skipped"]}
    assert skipped["green/empty.jpg"] == "skipped: empty file (0 bytes)"
    assert skipped["blue/error_page.jpg"] == "skipped: not an image: looks like HTML"
    assert skipped["red/words.png"] == "skipped: not an image: looks like plain text"
    assert skipped["green/truncated.jpg"].startswith("skipped: truncated or corrupt image")
    assert {row["path"] for row in report["conflicts"]} == {
        "green/005.png", "blue/green_in_blue.png"}
    assert report["duplicates"] == [
        {"path": "red/copy_of_004.jpg", "same_as": "red/004.jpg", "leakage": False}]
    assert report["empty_class_folders"] == ["empty_class/"]
    assert report["reasons"]["converted: downscaled"] == 1
    assert report["reasons"]["ignored: hidden file"] == 1
    assert report["reasons"]["ignored: system file"] == 2
    assert report["downscaled"] == 1
    assert report["image_sizes"]["longest_side"][">=4096"] == 1
    assert report["image_sizes"]["width"]["max"] == 4200
    assert sum(report["image_sizes"]["longest_side"].values()) == 31
    assert report["fit"] and report["problems"] == []


@pytest.mark.slow
def test_scan_agrees_with_image_folder_example_gen(messy, tmp_path):
    from components import image_folder_example_gen as gen
    from tests.test_image_folder_example_gen import _run_executor

    examples = _run_executor(messy, tmp_path)  # eval_percent 25 there
    manifest = {row["path"]: (row["status"], row["split"], row["reason"])
                for row in gen.read_manifest(examples.uri)}

    report_outcomes = scan.account_for_files(
        str(messy), IngestConfig(eval_percent=25), workers=2)[2]
    scanned = {o.relative_path: (o.status.value, o.split or None, o.reason)
               for o in report_outcomes}
    assert scanned == manifest


def test_presplit_leakage_and_the_verdict(tmp_path):
    data = tmp_path / "data"
    write_class_folder(data / "train", per_class=3)
    write_class_folder(data / "val", per_class=1, seed_offset=99)
    shutil.copy(data / "train" / "red" / "000.jpg", data / "val" / "red" / "same.jpg")
    report = scan.scan_folder(str(data), IngestConfig(min_images_per_class=5), workers=1)
    assert report["layout"] == "presplit"
    assert report["duplicates"] == [
        {"path": "val/red/same.jpg", "same_as": "train/red/000.jpg", "leakage": True}]
    assert report["images_per_split"]["eval"] == {"blue": 1, "green": 1, "red": 1}
    assert report["problems"] == [
        "classes below min_images_per_class=5: blue (4), green (4), red (4)"]
    assert not report["fit"]
    assert "verdict:    cannot train" in scan.format_report(report)


def test_cli_scan_json_and_text(messy, capsys):
    assert cli.main(["scan", str(messy), "--json", "--workers", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files_seen"] == 44 and report["reconciles"]

    assert cli.main(["scan", str(messy), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "44 seen = 23 kept + 8 converted + 6 skipped + 6 ignored + 1 duplicates" in text
    assert "warning:    class folder empty_class/ holds no usable image: not a class" in text
    assert "verdict:    ready to train" in text


def test_cli_scan_of_spans_reads_the_latest(tmp_path, capsys):
    write_class_folder(tmp_path / "d" / "span-1", per_class=2)
    write_class_folder(tmp_path / "d" / "span-2", per_class=3, seed_offset=50)
    assert cli.main(["scan", str(tmp_path / "d"), "--json", "--workers", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["layout"], report["span"], report["files_seen"]) == ("span-classes", 2, 9)


@pytest.mark.parametrize(
    ("make", "flags", "message"),
    [
        (lambda root: None, (), "does not exist"),
        (lambda root: write_class_folder(root, 1), ("--span", "3"), "has no span-<N> folders"),
        (lambda root: write_class_folder(root, 1), ("--eval-percent", "0"), "eval_percent"),
    ],
)
def test_cli_scan_bad_input_is_one_line_exit_2(tmp_path, capsys, make, flags, message):
    root = tmp_path / "images"
    make(root)
    assert cli.main(["scan", str(root), *flags]) == scan.EXIT_UNFIT
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_one_class_cannot_train(tmp_path, capsys):
    root = tmp_path / "images"
    (root / "only").mkdir(parents=True)
    (root / "only" / "a.png").write_bytes(encode(make_image((1, 2, 3), 1)))
    assert cli.main(["scan", str(root), "--workers", "1"]) == scan.EXIT_UNFIT
    assert "problem:    need at least two classes with images, found 1 (only)" in (
        capsys.readouterr().out)


def test_size_distribution_buckets():
    sizes = scan.size_distribution([(10, 300), (800, 600), (4096, 10), (2048, 2048)])
    assert sizes["longest_side"] == {"0-255": 0, "256-511": 1, "512-1023": 1, "1024-2047": 0,
                                     "2048-4095": 1, ">=4096": 1}
    assert sizes["width"] == {"min": 10, "median": 1424.0, "max": 4096}
    assert image_folder.LAYOUTS  # the scan reports these layout names
