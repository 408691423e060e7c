"""components/file_outcome.py: one outcome per file, with its reason; copies settled together."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from components import file_outcome, file_systems, image_normalization
from components.config import IngestConfig
from components.file_outcome import FileStatus, IngestedFile, ingest_file
from components.folder_walk import FoundFile, walk_image_folder
from tests.image_zoo import GOOD_JPEG, GOOD_PNG, ZOO, ingested_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, IngestedFile]:
    return ingested_zoo(tmp_path_factory.mktemp("zoo"))


# --------------------------------------------------------------------------
# Ignored without being read
# --------------------------------------------------------------------------


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

    monkeypatch.setattr(file_systems, "open", no_open, raising=False)
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

def test_ingest_file_never_raises_even_on_unexpected_errors(tmp_path, monkeypatch):
    path = tmp_path / "cats" / "a.png"
    path.parent.mkdir()
    path.write_bytes(GOOD_PNG)

    def explode(data, config):
        raise RuntimeError("boom")

    monkeypatch.setattr(image_normalization, "normalize_image", explode)
    result = ingest_file(FoundFile(str(path), "cats/a.png", "cats"))
    assert result.status is FileStatus.SKIPPED
    assert result.reason == "skipped: unexpected error decoding image (RuntimeError: boom)"
    assert result.content_hash == hashlib.sha256(GOOD_PNG).hexdigest()



# --------------------------------------------------------------------------
# Settings and small pieces
# --------------------------------------------------------------------------


def test_ingest_file_refuses_impossible_settings():
    """The settings' own checks (tests/test_config.py) run before any file is read."""
    with pytest.raises(ValueError, match="jpeg_quality must be <= 100, got 101"):
        ingest_file(
            FoundFile("/x/cats/a.jpg", "cats/a.jpg", "cats"), IngestConfig(jpeg_quality=101)
        )


def test_statuses_are_their_manifest_strings():
    assert FileStatus.KEPT == "kept"
    assert [status.value for status in FileStatus] == [
        "kept", "converted", "skipped", "ignored", "duplicate"]


def test_files_are_hashed_in_chunks(tmp_path, monkeypatch):
    path = tmp_path / "cats" / "f.jpg"
    path.parent.mkdir()
    data = os.urandom(3000)
    path.write_bytes(data)
    monkeypatch.setattr(file_outcome, "_READ_CHUNK", 1000)
    found = FoundFile(str(path), "cats/f.jpg", "cats")
    expected = hashlib.sha256(data).hexdigest()
    assert file_outcome.screen_file(found).content_hash == expected
    assert ingest_file(found).content_hash == expected


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

    monkeypatch.setattr(image_normalization, "normalize_image", no_decoding)
    screened = file_outcome.screen_file(good)
    assert screened.content_hash == hashlib.sha256(GOOD_JPEG).hexdigest()
    assert screened.outcome is None
    assert file_outcome.screen_file(hidden).outcome.reason == "ignored: hidden file"
    unreadable = file_outcome.screen_file(missing).outcome
    assert unreadable.status is FileStatus.SKIPPED
    assert unreadable.reason.startswith("skipped: unreadable file (FileNotFoundError")


def test_copies_are_decoded_once_first_is_kept_rest_are_duplicates(tmp_path, monkeypatch):
    copies = [_found(tmp_path, f"cats/{name}.jpg", GOOD_JPEG) for name in ("b", "a", "c")]
    decoded = []
    real_normalize = image_normalization.normalize_image
    monkeypatch.setattr(
        image_normalization, "normalize_image",
        lambda data, config: decoded.append(1) or real_normalize(data, config),
    )

    outcomes = {o.relative_path: o for o in file_outcome.resolve_copies(copies)}

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
    outcomes = list(file_outcome.resolve_copies(copies))
    # Not a label conflict: two empty files say nothing about labels.
    assert [o.reason for o in outcomes] == ["skipped: empty file (0 bytes)"] * 2


def test_copies_under_two_labels_are_a_conflict(tmp_path):
    copies = [_found(tmp_path, "cats/x.png", GOOD_PNG), _found(tmp_path, "dogs/x.png", GOOD_PNG)]
    outcomes = {o.relative_path: o for o in file_outcome.resolve_copies(copies)}
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
    outcomes = {o.relative_path: o for o in file_outcome.resolve_copies(
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
    screened = file_outcome.screen_file(found)
    expected = hashlib.sha256(GOOD_JPEG).hexdigest()

    def no_hashing(*args):
        raise AssertionError("hashed twice")

    monkeypatch.setattr(file_outcome.hashlib, "sha256", no_hashing)
    (outcome,) = file_outcome.resolve_copies([found], content_hash=screened.content_hash)
    assert outcome.status is FileStatus.KEPT
    assert outcome.content_hash == screened.content_hash == expected
