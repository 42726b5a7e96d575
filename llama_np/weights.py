"""The converted model directory: write it tensor by tensor, memory-map it back.

    OUT_DIR/config.json         ModelArgs + where the model came from
    OUT_DIR/model.safetensors   every tensor float16, Meta's names and rotary layout; or, when
                                config.json says "weight_type": "int8", each matrix X int8 (I8)
                                with its float32 row scales beside it as X_scale (quantize.py)
    OUT_DIR/tokenizer.model     when the source had one

safetensors is: 8 bytes little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw
little-endian data. Because the header lists every shape up front, we write it first and then
stream the tensors one at a time — peak memory is one tensor, not the model. Loading parses the
header and memory-maps the file: every tensor is a zero-copy view; no weight byte is read until
the forward pass touches it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from safetensors import safe_open
from tqdm import tqdm

from .config import ModelArgs, foreign_values, read_json
from .atomic import atomic_output_dir
from .bounds import checked_shape, flat_view, n_elements
from .errors import LlamaNpError
from .pages import drop_pages
from .quantize import Int8Rows, int8_names, quantize_rows
from .spec import expected_shapes, scale_name

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"

_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "BF16": np.uint16, "I8": np.int8}
SAFETENSORS_DTYPE_NAMES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.int8): "I8"}
WEIGHT_TYPES = ("float16", "int8")       # config.json "weight_type" (absent: float16)


def check_weight_type(weight_type) -> str:
    if weight_type not in WEIGHT_TYPES:
        raise LlamaNpError(f"unknown weight type {weight_type!r}; choose one of {', '.join(WEIGHT_TYPES)}")
    return weight_type


def stored_layout(args: ModelArgs, weight_type: str = "float16") -> dict[str, tuple[str, tuple]]:
    """name -> (safetensors dtype, shape) of every tensor a new file holds, in Meta's order: float16,
    or for an int8 directory the matrices of quantize.int8_names as I8, each followed by its F32
    scales (one per row). (Reading follows the file: any matrix stored I8 has its scales beside it.)"""
    int8 = set(int8_names(args)) if check_weight_type(weight_type) == "int8" else set()
    layout = {}
    for name, shape in expected_shapes(args).items():
        layout[name] = ("I8" if name in int8 else "F16", shape)
        if name in int8:
            layout[scale_name(name)] = ("F32", shape[:1])
    return layout


def write_model_dir(out_dir, args: ModelArgs, tensors: Iterable[tuple[str, Callable[[], np.ndarray]]],
                    source: dict, tokenizer_path=None, progress: bool = True, weight_type: str = "float16") -> Path:
    """Write a converted model directory atomically (atomic.py: it appears whole or not at all),
    its matrices float16 or int8 rows + scales (`weight_type`).

    `tensors` yields (name, load) pairs in any order covering exactly `expected_shapes(args)`;
    `load()` returns that tensor (any float dtype), called once, one tensor at a time.
    config.json records a sha256 of the safetensors header, of every tensor's bytes and of the
    tokenizer, so that `llama-np verify` can name what changed later.
    """
    shapes, layout = expected_shapes(args), stored_layout(args, weight_type)
    with atomic_output_dir(out_dir) as tmp:
        writer = SafetensorsWriter(tmp / WEIGHTS_FILE, layout)
        with tqdm(total=len(shapes), desc="converting", unit="tensor", leave=False,
                  disable=None if progress else True) as bar:                      # None: on a terminal only
            for name, load in tensors:
                if name not in shapes:
                    raise LlamaNpError(f"unexpected tensor {name!r} in the checkpoint")
                if name in writer.written:
                    raise LlamaNpError(f"tensor {name!r} appears twice in the checkpoint")
                array = load()
                if tuple(array.shape) != shapes[name]:
                    raise LlamaNpError(f"tensor {name!r} has shape {tuple(array.shape)}, "
                                       f"expected {shapes[name]} from the model's config")
                for part, data in _encode(name, array, layout[name][0]):
                    writer.write(part, data)
                drop_pages(array)                       # a memory-mapped source: done with its pages
                bar.update(1)
        checksums = writer.finish("checkpoint")
        write_config(tmp, {**args.to_dict(), "weight_type": weight_type, "source": source}, tokenizer_path,
                     checksums)
    return Path(out_dir)


def write_config(model_dir: Path, config: dict, tokenizer_path=None, checksums: dict | None = None) -> None:
    """config.json, and the tokenizer copied in beside it when there is one; with `checksums` (the
    weights file's, from SafetensorsWriter.finish) config.json records them and the tokenizer's."""
    files = {WEIGHTS_FILE: checksums} if checksums is not None else {}
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, model_dir / TOKENIZER_FILE)
        files[TOKENIZER_FILE] = file_sha256(model_dir / TOKENIZER_FILE)
    if checksums is not None:
        config = {**config, "checksums": files}
    (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class SafetensorsWriter:
    """A safetensors file written header first, then one tensor at a time, in any order.

    `entries`: name -> (safetensors dtype, shape) of every tensor the file will hold, in file order.
    Peak memory is the tensor being written, whatever the size of the file. Each tensor's bytes
    are hashed as they are written (sha256), for config.json's checksums.
    """

    def __init__(self, path: Path, entries: dict[str, tuple[str, tuple[int, ...]]]):
        header, offset = {}, 0
        for name, (dtype, shape) in entries.items():
            nbytes = n_elements(shape) * np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        header["__metadata__"] = {"format": "llama_np"}
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        header_bytes += b" " * (-len(header_bytes) % 8)  # data starts 8-byte aligned
        head = struct.pack("<Q", len(header_bytes)) + header_bytes
        self.header, self.data_start = header, len(head)
        self.path, self.written, self.sums = path, set(), {"header": hashlib.sha256(head).hexdigest(), "tensors": {}}
        self.file = open(path, "wb")
        self.file.write(head)
        self.file.truncate(self.data_start + offset)

    def write(self, name: str, array: np.ndarray) -> None:
        """Write one tensor (it must have exactly the dtype and shape of its header entry)."""
        entry = self.header[name]
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
        assert array.dtype == dtype and list(array.shape) == entry["shape"], \
            f"{self.path}: {name!r} is {array.dtype} {array.shape}, the header says {entry['dtype']} {entry['shape']}"
        data = np.ascontiguousarray(array)
        self.file.seek(self.data_start + entry["data_offsets"][0])
        self.file.write(data.data)
        self.sums["tensors"][name] = hashlib.sha256(data.data).hexdigest()
        self.written.add(name)

    def finish(self, what: str = "source") -> dict:
        """Close the file; every tensor of the header must have been written -> the checksums."""
        self.file.close()
        missing = [n for n in self.header if n != "__metadata__" and n not in self.written]
        if missing:
            raise LlamaNpError(f"{what} is missing tensor {missing[0]!r}"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        order = [n for n in self.header if n != "__metadata__"]
        return {"header": self.sums["header"], "tensors": {n: self.sums["tensors"][n] for n in order}}


def _encode(name: str, array: np.ndarray, code: str) -> list[tuple[str, np.ndarray]]:
    """The stored form of one tensor: [(name, float16)], or int8 rows and their scales."""
    if code == "I8":
        w = quantize_rows(array, name)
        return [(name, w.q), (scale_name(name), w.scale.astype("<f4"))]
    return [(name, to_float16(name, array))]


def to_float16(name: str, array: np.ndarray) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating):
        raise LlamaNpError(f"tensor {name!r} has dtype {array.dtype}, expected floating point")
    with np.errstate(over="ignore"):              # too large for float16: said below, not warned
        out = np.ascontiguousarray(array, dtype="<f2")
    if not np.isfinite(out).all():
        bad = "overflows float16" if np.isfinite(array).all() else "contains inf or nan"
        raise LlamaNpError(f"tensor {name!r} {bad}")
    return out


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Memory-map a safetensors file: name -> read-only zero-copy view (bf16 as uint16 bits).

    The `safetensors` library validates the file first, the way the format requires (header
    length and JSON, dtypes, shapes whose bytes equal their offsets' span, tensors contiguous, in
    order, not overlapping, covering the data exactly). We then read the same header ourselves,
    insist that it says what the library saw, and make each view through bounds.flat_view.
    """
    path = Path(path)
    library_view = _validated_by_library(path)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))            # the library has parsed these very bytes already
    data_start, out = 8 + n, {}
    mm = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size > data_start else b""
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in _SAFETENSORS_DTYPES:
            raise LlamaNpError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}, which llama_np does not "
                               f"read ({', '.join(_SAFETENSORS_DTYPES)})")
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
        shape = checked_shape(info["shape"], f"{path}: tensor {name!r}")
        begin, end = info["data_offsets"]
        if library_view.get(name) != (info["dtype"], shape) or end - begin != n_elements(shape) * dtype.itemsize:
            raise LlamaNpError(f"{path}: tensor {name!r}: the header does not say what the safetensors library read")
        out[name] = flat_view(mm, dtype, data_start + begin, n_elements(shape), f"{path}: tensor {name!r}").reshape(shape)
    return out


def _validated_by_library(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) as the safetensors library reads the file, or a one-line LlamaNpError."""
    if not path.is_file():
        raise LlamaNpError(f"{path}: not found")
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.keys()}
    except Exception as e:                        # the library's verdict, whatever it raises: not valid
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LlamaNpError(f"{path}: not a valid safetensors file, truncated or corrupt ({reason[:160]})") from None


def is_model_dir(path: Path) -> bool:
    """A directory we converted: config.json with ModelArgs' fields beside model.safetensors."""
    if not (path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()):
        return False
    try:
        return "n_layers" in read_json(path / CONFIG_FILE)
    except LlamaNpError:
        return False


def read_model_dir(model_dir, shapes_of: Callable[[ModelArgs, dict], dict] | None = None, join_scales: bool = True
                   ) -> tuple[ModelArgs, dict[str, np.ndarray], dict]:
    """(ModelArgs, name -> memory-mapped weight, the config.json dict). Weights are float16 arrays,
    or for an int8 directory Int8Rows (int8 map + float32 scales) for the matrices (join_scales=False:
    the int8 arrays and their "_scale" vectors as stored).

    The directory must hold every tensor of the model with its shape; `shapes_of(args, config)`
    says which instead (a tensor-parallel rank's slices: llama_np/parallel).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LlamaNpError(f"{model_dir}: not a directory (expected a converted model: "
                           f"run `llama-np convert` first)")
    config = read_json(model_dir / CONFIG_FILE)
    with foreign_values(model_dir / CONFIG_FILE):
        args = ModelArgs.from_dict(config)
    if shapes_of is None and "tensor_parallel" in config:
        raise LlamaNpError(f"{model_dir}: one rank of a tensor-parallel model ({config['tensor_parallel']!r:.60}); "
                           f"run the directory that holds all its ranks with --tensor-parallel")
    try:
        weight_type = check_weight_type(config.get("weight_type", "float16"))
    except LlamaNpError as e:
        raise LlamaNpError(f"{model_dir / CONFIG_FILE}: {e}") from None
    path = model_dir / WEIGHTS_FILE
    weights = read_safetensors(path)
    with foreign_values(model_dir / CONFIG_FILE):
        shapes = expected_shapes(args) if shapes_of is None else shapes_of(args, config)
    for name, shape in shapes.items():
        if name not in weights:
            raise LlamaNpError(f"{path}: missing tensor {name!r}")
        if weights[name].shape != shape:
            raise LlamaNpError(f"{path}: tensor {name!r} has shape {weights[name].shape}, config.json says {shape}")
    return args, _join_scales(path, weights, weight_type) if join_scales else weights, config


def _join_scales(path: Path, weights: dict, weight_type: str) -> dict:
    """Each int8 matrix of the file and its scales (float32, one per row, finite, >= 0) as one
    Int8Rows; every other tensor as read."""
    int8 = [name for name, w in weights.items() if w.dtype == np.int8]
    if int8 and weight_type != "int8":
        raise LlamaNpError(f"{path}: tensor {int8[0]!r} is int8 but config.json does not say weight_type int8")
    out = {name: w for name, w in weights.items() if name not in {scale_name(n) for n in int8}}
    for name in int8:
        q, scale = weights[name], weights.get(scale_name(name))
        if q.ndim != 2 or scale is None or scale.dtype != np.float32 or scale.shape != q.shape[:1]:
            raise LlamaNpError(f"{path}: int8 tensor {name!r} needs its float32 scales {scale_name(name)!r}, "
                               f"one per row ({q.shape[0]},)")
        if not (np.isfinite(scale).all() and (scale >= 0).all()):
            raise LlamaNpError(f"{path}: {scale_name(name)!r} holds a negative, inf or nan scale")
        out[name] = Int8Rows(q, scale)
    return out
