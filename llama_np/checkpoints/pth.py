"""Read PyTorch `.pth`/`.pt`/`.bin` files without PyTorch.

Since PyTorch 1.6 `torch.save` writes a zip archive (stored, not compressed):

    <archive>/data.pkl        a pickle of the object (a state dict: name -> tensor)
    <archive>/data/<key>      one raw little-endian storage per key
    <archive>/byteorder       "little"

In the pickle a tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
and a storage is a *persistent id* ("storage", torch.<Type>Storage, key, location, numel).
We unpickle with a restricted Unpickler that knows only these few names — anything else in
the pickle (a class, a function such as os.system) is refused, so a malicious file cannot run
code. Each tensor comes back as a `LazyTensor`: nothing is read until `.numpy()` is called,
and then the storage is memory-mapped, not read into RAM.
"""
from __future__ import annotations

import collections
import mmap
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bounds import checked_shape, flat_view, is_index, strided_view
from ..errors import LlamaNpError
from ..pages import drop_pages

# torch storage type name -> (numpy dtype of the raw elements, the dtype name we report)
# bfloat16 has no numpy dtype: its raw elements are read as uint16 and widened to float32.
STORAGE_DTYPES = {
    "FloatStorage": (np.float32, "float32"),
    "HalfStorage": (np.float16, "float16"),
    "BFloat16Storage": (np.uint16, "bfloat16"),
    "DoubleStorage": (np.float64, "float64"),
    "LongStorage": (np.int64, "int64"),
    "IntStorage": (np.int32, "int32"),
    "ShortStorage": (np.int16, "int16"),
    "CharStorage": (np.int8, "int8"),
    "ByteStorage": (np.uint8, "uint8"),
    "BoolStorage": (np.bool_, "bool"),
}


# What a damaged zip or pickle makes Python's zipfile, zlib and pickle modules raise.
CORRUPT = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zlib.error, ValueError, TypeError, AttributeError,
           IndexError, KeyError, struct.error, OSError, OverflowError, RuntimeError, NotImplementedError,
           RecursionError, MemoryError)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 bits up (exact for every value)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class _StorageType:
    name: str  # e.g. "BFloat16Storage"


class _Storage:
    """One raw storage of the archive, memory-mapped on first use."""

    def __init__(self, archive: "_Archive", key: str, storage_type: _StorageType, numel: int):
        if storage_type.name not in STORAGE_DTYPES:
            raise LlamaNpError(f"{archive.path}: unsupported storage type {storage_type.name}")
        self.archive, self.key, self.numel = archive, key, numel
        self.np_dtype, self.dtype = STORAGE_DTYPES[storage_type.name]

    def array(self) -> np.ndarray:
        return self.archive.storage_array(self.key, self.np_dtype, self.numel)


@dataclass(frozen=True)
class LazyTensor:
    """A tensor of a `.pth` file: its dtype and shape are known, its data is read on demand."""
    storage: _Storage
    offset: int                 # in elements
    shape: tuple
    stride: tuple               # in elements

    @property
    def dtype(self) -> str:
        return self.storage.dtype

    def raw(self) -> np.ndarray:
        """A zero-copy view of the stored elements (bfloat16 as its uint16 bits), proven in bounds."""
        return strided_view(self.storage.array(), self.offset, self.shape, self.stride,
                            f"{self.storage.archive.path}: storage {self.storage.key}")

    def numpy(self) -> np.ndarray:
        """The tensor's values: bfloat16 widened to float32 (exactly), other dtypes as stored
        (a zero-copy view of the file)."""
        raw = self.raw()
        if self.dtype != "bfloat16":
            return raw
        values = bf16_to_float32(raw)
        drop_pages(raw)                                   # the widened copy is all we need now
        return values

    def release(self) -> None:
        """Done with this tensor: its pages of the file stop counting in our memory."""
        drop_pages(self.raw())


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2, as far as a state dict needs it: every number checked here,
    while unpickling, so that a LazyTensor never holds one that was not."""
    if not isinstance(storage, _Storage):
        raise LlamaNpError(f"the pickle rebuilds a tensor from {type(storage).__name__}, not a storage")
    what = f"{storage.archive.path}: storage {storage.key}"
    shape = checked_shape(size, what)
    if not (isinstance(stride, (tuple, list)) and len(stride) == len(shape) and all(is_index(x) for x in stride)):
        raise LlamaNpError(f"{what}: bad strides {stride!r:.80} for shape {shape}")
    if not is_index(storage_offset):
        raise LlamaNpError(f"{what}: bad storage offset {storage_offset!r:.40}")
    return LazyTensor(storage, int(storage_offset), shape, tuple(int(x) for x in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


# The only names a checkpoint's pickle may ask for. Everything else is refused.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle._Unpickler):
    """The pure-Python unpickler: its memo is a dict, so a PUT of index 2**32 costs one entry (the C
    unpickler would grow an array to that index), and it recurses nowhere."""

    def __init__(self, file, archive: "_Archive"):
        super().__init__(file)
        self.archive = archive

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise LlamaNpError(f"{self.archive.path}: the pickle asks for {module}.{name}, which is not a "
                               f"tensor; refusing to load it (only tensors and dicts are allowed)") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise LlamaNpError(f"{self.archive.path}: unexpected persistent id in the pickle: {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not (isinstance(key, str) and is_index(numel)):
            raise LlamaNpError(f"{self.archive.path}: bad storage key or size in the pickle: {pid!r:.80}")
        return self.archive.storage(key, storage_type, int(numel))


class _Archive:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise LlamaNpError(f"{path}: not found") from None
        except CORRUPT as e:
            raise LlamaNpError(f"{path}: not a PyTorch zip checkpoint ({e}); the legacy pre-1.6 "
                               f"format is not supported") from None
        pickles = [n for n in self.zip.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise LlamaNpError(f"{path}: not a PyTorch checkpoint (no data.pkl in the archive)")
        self.prefix = pickles[0][: -len("data.pkl")]
        self._storages: dict[str, _Storage] = {}
        self._file = None
        self._mmap = None

    def storage(self, key, storage_type, numel) -> _Storage:
        if key not in self._storages:
            self._storages[key] = _Storage(self, key, storage_type, numel)
        return self._storages[key]

    def storage_array(self, key: str, np_dtype, numel: int) -> np.ndarray:
        name = f"{self.prefix}data/{key}"
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise LlamaNpError(f"{self.path}: storage {name} is missing from the archive") from None
        if info.compress_type != zipfile.ZIP_STORED:
            raise LlamaNpError(f"{self.path}: storage {name} is compressed; expected torch's stored zip")
        nbytes = numel * np.dtype(np_dtype).itemsize
        if info.file_size < nbytes:
            raise LlamaNpError(f"{self.path}: storage {name} holds {info.file_size} bytes, expected {nbytes}")
        return flat_view(self._map(), np_dtype, self._data_offset(info), numel, f"{self.path}: storage {name}")

    def _map(self):
        if self._mmap is None:
            self._file = open(self.path, "rb")
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mmap

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a member's bytes start: after its local header (30 bytes + name + extra)."""
        mm = self._map()
        header = mm[info.header_offset: info.header_offset + 30]
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise LlamaNpError(f"{self.path}: corrupt zip (bad local header for {info.filename})")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len


def load_pth(path) -> object:
    """Unpickle a torch checkpoint into plain Python objects with `LazyTensor`s for tensors."""
    archive = _Archive(Path(path))
    byteorder = archive.prefix + "byteorder"
    try:
        if byteorder in archive.zip.namelist() and archive.zip.read(byteorder)[:16].strip() != b"little":
            raise LlamaNpError(f"{path}: big-endian checkpoints are not supported")
        with archive.zip.open(archive.prefix + "data.pkl") as f:
            return _Unpickler(f, archive).load()
    except LlamaNpError:
        raise
    except CORRUPT as e:
        raise LlamaNpError(f"{path}: corrupt checkpoint ({type(e).__name__}: {str(e)[:120]})") from None


def load_pth_state_dict(path) -> dict:
    """A checkpoint that must be a dict of name -> LazyTensor (Meta's consolidated.NN.pth)."""
    obj = load_pth(path)
    if not isinstance(obj, dict):
        raise LlamaNpError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj
