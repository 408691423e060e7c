"""Tests for trainer.safe_pth: the torch-free, restricted reader of PyTorch checkpoints."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest

from trainer import safe_pth

# -- helpers ---------------------------------------------------------------------------------


def _op(value: object) -> bytes:
    """Pickle opcodes pushing `value` (no PROTO header, no STOP)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _write_zip_checkpoint(path, data_pkl: bytes, storages: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)


# -- checkpoint reader -----------------------------------------------------------------------


def test_restricted_unpickler_rejects_forbidden_global(tmp_path):
    marker = tmp_path / "pwned"
    payload = (
        _global("os", "system") + _op(f"touch {marker}") + pickle.TUPLE1 + pickle.REDUCE
    )
    path = tmp_path / "evil.pth"
    _write_zip_checkpoint(path, b"\x80\x02" + payload + pickle.STOP, {})

    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        safe_pth.read_torch_state_dict(str(path))
    assert not marker.exists()


def test_legacy_checkpoint_with_forbidden_global_is_refused(tmp_path):
    """The legacy stream (what the weight packages ship) goes through the same unpickler."""
    marker = tmp_path / "pwned"
    header = b"".join(
        pickle.dumps(value, protocol=2)
        for value in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})
    )
    payload = _global("os", "system") + _op(f"touch {marker}") + pickle.TUPLE1 + pickle.REDUCE
    path = tmp_path / "evil_legacy.pth"
    path.write_bytes(header + b"\x80\x02" + payload + pickle.STOP)

    forbidden = r"evil_legacy\.pth: forbidden global os\.system"
    with pytest.raises(pickle.UnpicklingError, match=forbidden):
        safe_pth.read_torch_state_dict(str(path))
    assert not marker.exists()


def test_zip_checkpoint_rebuilds_strided_tensor(tmp_path):
    # A 2x3 float tensor stored transposed (stride (1, 2)) at storage offset 1.
    storage = np.arange(7, dtype="<f4")
    tensor = (
        _global("torch._utils", "_rebuild_tensor_v2")
        + pickle.MARK
        + pickle.MARK
        + _op("storage")
        + _global("torch", "FloatStorage")
        + _op("0")
        + _op("cpu")
        + _op(7)
        + pickle.TUPLE
        + pickle.BINPERSID
        + _op(1)
        + _op((2, 3))
        + _op((1, 2))
        + pickle.NEWFALSE
        + _global("collections", "OrderedDict")
        + pickle.EMPTY_TUPLE
        + pickle.REDUCE
        + pickle.TUPLE
        + pickle.REDUCE
    )
    data_pkl = (
        b"\x80\x02"
        + _global("collections", "OrderedDict")
        + pickle.EMPTY_TUPLE
        + pickle.REDUCE
        + pickle.MARK
        + _op("w")
        + tensor
        + pickle.SETITEMS
        + pickle.STOP
    )
    path = tmp_path / "tiny.pth"
    _write_zip_checkpoint(path, data_pkl, {"0": storage.tobytes()})

    result = safe_pth.read_torch_state_dict(str(path))

    np.testing.assert_array_equal(result["w"], [[1, 3, 5], [2, 4, 6]])
    assert result["w"].flags["C_CONTIGUOUS"]


def test_non_checkpoint_raises_value_error_naming_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        safe_pth.read_torch_state_dict(str(path))


def test_forbidden_global_is_one_error_naming_the_file_with_nothing_behind_it(tmp_path):
    """A report of the failure's root cause (the CLI's one line) shows the refusal itself.

    The refusal once carried the allow-list lookup's KeyError as its context, and the
    Trainer's one-line error read "KeyError: ('posix', 'system')".
    """
    path = tmp_path / "evil.pth"
    payload = _global("posix", "system") + _op("true") + pickle.TUPLE1 + pickle.REDUCE
    _write_zip_checkpoint(path, b"\x80\x02" + payload + pickle.STOP, {})

    for read in (safe_pth.read_torch_state_dict, safe_pth.check_torch_checkpoint):
        with pytest.raises(safe_pth.ForbiddenGlobalError) as raised:
            read(str(path))
        assert str(raised.value) == (
            f"{path}: forbidden global posix.system in checkpoint; a state dict only needs "
            "tensors, storages and OrderedDict")
        assert raised.value.__context__ is None and raised.value.__cause__ is None


def test_a_non_checkpoint_error_names_the_file_and_chains_nothing(tmp_path):
    path = tmp_path / "list.pth"
    _write_zip_checkpoint(path, pickle.dumps([1, 2], protocol=2), {})
    with pytest.raises(ValueError) as raised:
        safe_pth.read_torch_state_dict(str(path))
    assert str(raised.value) == (
        f"{path}: not a valid PyTorch checkpoint: checkpoint holds a list, not a state dict")
    assert raised.value.__context__ is None


def test_check_reads_the_pickle_only(tmp_path):
    """The up-front check accepts a checkpoint whose tensor bytes are missing; reading fails."""
    tensor = (
        _global("torch._utils", "_rebuild_tensor_v2")
        + pickle.MARK
        + pickle.MARK + _op("storage") + _global("torch", "FloatStorage") + _op("0")
        + _op("cpu") + _op(4) + pickle.TUPLE + pickle.BINPERSID
        + _op(0) + _op((4,)) + _op((1,)) + pickle.NEWFALSE
        + _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
        + pickle.TUPLE + pickle.REDUCE
    )
    data_pkl = (b"\x80\x02" + pickle.EMPTY_DICT + _op("w") + tensor + pickle.SETITEM
                + pickle.STOP)
    path = tmp_path / "no_tensor_bytes.pth"
    _write_zip_checkpoint(path, data_pkl, {})

    assert safe_pth.check_torch_checkpoint(str(path)) is None
    with pytest.raises(ValueError, match="no_tensor_bytes.pth: not a PyTorch checkpoint"):
        safe_pth.read_torch_state_dict(str(path))
