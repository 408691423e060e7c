"""components/folder_walk.py: every path found once, in order, never looping; path rules."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from components.folder_walk import FoundFile, ignore_reason, walk_image_folder
from tests.image_zoo import GOOD_JPEG, ZOO, build_zoo


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo") / "images"
    root.mkdir()
    build_zoo(root)
    return root


# --------------------------------------------------------------------------
# Walking
# --------------------------------------------------------------------------


def test_walk_accounts_for_every_path_once_and_terminates(zoo_root):
    found = list(itertools.islice(walk_image_folder(str(zoo_root)), 1000))
    assert len(found) < 1000, "walk did not terminate"
    paths = [f.relative_path for f in found]
    assert len(set(paths)) == len(paths), "a path was yielded twice"
    expected = set(ZOO) | {
        "cats/zz_real.jpg",
        "cats/aa_link.jpg",
        "cats/link_to_plain.jpg",
        "cats/broken.jpg",
        "dogs/hardlink.png",
        "birds/robin.png",
    }
    assert set(paths) == expected


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
# Path rules
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


def test_found_file_ignore_reason_adds_the_rules_that_need_the_walk(zoo_root):
    found = {f.relative_path: f for f in walk_image_folder(str(zoo_root))}
    assert found["cats/plain.jpg"].ignore_reason() is None
    assert found["cats/notes.txt"].ignore_reason() == "ignored: not an image file (.txt)"
    assert found["cats/aa_link.jpg"].ignore_reason() == (
        "ignored: symlink to a file already counted (cats/zz_real.jpg)")
    assert found["dogs/hardlink.png"].ignore_reason() == (
        "ignored: same file already counted as cats/plain.png")
    # No label: a file directly in a (split) root, even under a prefixed path.
    stray = FoundFile("/data/train/stray.jpg", "train/stray.jpg", None)
    assert ignore_reason(stray.relative_path) is None
    assert stray.ignore_reason() == "ignored: not inside a class folder"
