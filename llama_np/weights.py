"""The converted model directory: write it tensor by tensor, memory-map it back.

    OUT_DIR/config.json         ModelArgs + where the model came from
    OUT_DIR/model.safetensors   every tensor float16, Meta's names and rotary layout
    OUT_DIR/tokenizer.model     when the source had one

safetensors is: 8 bytes little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw
little-endian data. Because the header lists every shape up front, we write it first and then
stream the tensors one at a time — peak memory is one tensor, not the model. Loading parses the
header and memory-maps the file: every tensor is a zero-copy view; no weight byte is read until
the forward pass touches it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from .config import ModelArgs, read_json
from .errors import LlamaNpError
from .pages import drop_pages
from .spec import expected_shapes

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"

_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "BF16": np.uint16, "I8": np.int8}
SAFETENSORS_DTYPE_NAMES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.int8): "I8"}


def write_model_dir(out_dir, args: ModelArgs, tensors: Iterable[tuple[str, Callable[[], np.ndarray]]],
                    source: dict, tokenizer_path=None, progress: bool = True) -> Path:
    """Write a converted model directory atomically.

    `tensors` yields (name, load) pairs in any order covering exactly `expected_shapes(args)`;
    `load()` returns that tensor (any float dtype), called once, one tensor at a time. Everything
    is written into a temporary sibling directory that is renamed to `out_dir` only at the end,
    so an interrupted run never leaves a directory that looks complete.
    """
    with atomic_dir(out_dir) as tmp:
        shapes = expected_shapes(args)
        writer = SafetensorsWriter(tmp / WEIGHTS_FILE, {name: ("F16", shape) for name, shape in shapes.items()})
        with tqdm(total=len(shapes), desc="converting", unit="tensor", disable=not progress, leave=False) as bar:
            for name, load in tensors:
                if name not in shapes:
                    raise LlamaNpError(f"unexpected tensor {name!r} in the checkpoint")
                if name in writer.written:
                    raise LlamaNpError(f"tensor {name!r} appears twice in the checkpoint")
                array = load()
                if tuple(array.shape) != shapes[name]:
                    raise LlamaNpError(f"tensor {name!r} has shape {tuple(array.shape)}, "
                                       f"expected {shapes[name]} from the model's config")
                writer.write(name, to_float16(name, array))
                drop_pages(array)                       # a memory-mapped source: done with its pages
                bar.update(1)
        writer.finish("checkpoint")
        write_config(tmp, {**args.to_dict(), "source": source}, tokenizer_path)
    return Path(out_dir)


@contextlib.contextmanager
def atomic_dir(out_dir) -> Iterator[Path]:
    """A temporary sibling of `out_dir` to write into, renamed to `out_dir` when the block ends
    without an error (removed otherwise): a directory that exists is always complete."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LlamaNpError(f"{out_dir}: output directory exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)               # mkdtemp makes it private; the result is not
        yield tmp
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_config(model_dir: Path, config: dict, tokenizer_path=None) -> None:
    """config.json, and the tokenizer copied in beside it when there is one."""
    (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, model_dir / TOKENIZER_FILE)


class SafetensorsWriter:
    """A safetensors file written header first, then one tensor at a time, in any order.

    `entries`: name -> (safetensors dtype, shape) of every tensor the file will hold, in file order.
    Peak memory is the tensor being written, whatever the size of the file.
    """

    def __init__(self, path: Path, entries: dict[str, tuple[str, tuple[int, ...]]]):
        header, offset = {}, 0
        for name, (dtype, shape) in entries.items():
            nbytes = int(np.prod(shape)) * np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        header["__metadata__"] = {"format": "llama_np"}
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        header_bytes += b" " * (-len(header_bytes) % 8)  # data starts 8-byte aligned
        self.header, self.data_start = header, 8 + len(header_bytes)
        self.path, self.written = path, set()
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
        self.file.truncate(self.data_start + offset)

    def write(self, name: str, array: np.ndarray) -> None:
        """Write one tensor (it must have exactly the dtype and shape of its header entry)."""
        entry = self.header[name]
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
        assert array.dtype == dtype and list(array.shape) == entry["shape"], \
            f"{self.path}: {name!r} is {array.dtype} {array.shape}, the header says {entry['dtype']} {entry['shape']}"
        self.file.seek(self.data_start + entry["data_offsets"][0])
        self.file.write(np.ascontiguousarray(array).tobytes())
        self.written.add(name)

    def finish(self, what: str = "source") -> None:
        """Close the file; every tensor of the header must have been written."""
        self.file.close()
        missing = [n for n in self.header if n != "__metadata__" and n not in self.written]
        if missing:
            raise LlamaNpError(f"{what} is missing tensor {missing[0]!r}"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def to_float16(name: str, array: np.ndarray) -> np.ndarray:
    """A tensor as contiguous little-endian float16, refusing what is not finite floating point."""
    if not np.issubdtype(array.dtype, np.floating):
        raise LlamaNpError(f"tensor {name!r} has dtype {array.dtype}, expected floating point")
    out = np.ascontiguousarray(array, dtype="<f2")
    if not np.isfinite(out).all():
        bad = "overflows float16" if np.isfinite(array).all() else "contains inf or nan"
        raise LlamaNpError(f"tensor {name!r} {bad}")
    return out


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Memory-map a safetensors file: name -> read-only zero-copy view (bf16 as uint16 bits)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0] if size >= 8 else None
            if n is None or n > size - 8:
                raise LlamaNpError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise LlamaNpError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LlamaNpError(f"{path}: not a safetensors file (header is not JSON)") from None
    data_start = 8 + n
    if size == data_start:
        return {}
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
            begin, end = info["data_offsets"]
            shape = tuple(info["shape"])
        except (KeyError, TypeError, ValueError):
            raise LlamaNpError(f"{path}: tensor {name!r} has an unsupported or malformed entry "
                               f"{info!r:.100}") from None
        if end - begin != int(np.prod(shape)) * dtype.itemsize or data_start + end > size:
            raise LlamaNpError(f"{path}: tensor {name!r} does not fit in the file (truncated or corrupt)")
        out[name] = mm[data_start + begin: data_start + end].view(dtype).reshape(shape)
    return out


def is_model_dir(path: Path) -> bool:
    """A directory we converted: config.json with ModelArgs' fields beside model.safetensors."""
    if not (path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()):
        return False
    try:
        return "n_layers" in read_json(path / CONFIG_FILE)
    except LlamaNpError:
        return False


def read_model_dir(model_dir, shapes_of: Callable[[ModelArgs, dict], dict] | None = None
                   ) -> tuple[ModelArgs, dict[str, np.ndarray], dict]:
    """(ModelArgs, name -> memory-mapped array, the config.json dict).

    The directory must hold every tensor of the model with its shape; `shapes_of(args, config)`
    says which instead (a tensor-parallel rank's slices: llama_np/parallel).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LlamaNpError(f"{model_dir}: not a directory (expected a converted model: "
                           f"run `llama-np convert` first)")
    config = read_json(model_dir / CONFIG_FILE)
    args = ModelArgs.from_dict(config)
    if shapes_of is None and "tensor_parallel" in config:
        tp = config["tensor_parallel"]
        raise LlamaNpError(f"{model_dir}: one rank of a tensor-parallel model ({tp!r:.60}); run the directory "
                           f"that holds all its ranks with --tensor-parallel")
    shapes = expected_shapes(args) if shapes_of is None else shapes_of(args, config)
    weights = read_safetensors(model_dir / WEIGHTS_FILE)
    for name, shape in shapes.items():
        if name not in weights:
            raise LlamaNpError(f"{model_dir / WEIGHTS_FILE}: missing tensor {name!r}")
        if weights[name].shape != shape:
            raise LlamaNpError(f"{model_dir / WEIGHTS_FILE}: tensor {name!r} has shape "
                               f"{weights[name].shape}, config.json says {shape}")
    return args, weights, config
