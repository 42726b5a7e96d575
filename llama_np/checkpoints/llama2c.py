"""llama2.c checkpoints (karpathy/llama2.c, the "tinyllamas" stories15M/42M/110M/260K models).

Three kinds of file, all with Meta's rotary layout (interleaved pairs) and Meta's tensor names:

legacy `.bin` (export.py --version 0): 7 int32
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len
  (vocab_size written NEGATIVE when the classifier is separate from the embedding), then float32:
    tok_embeddings (V, D); attention_norm (L, D); wq (L, H*HD, D); wk, wv (L, KVH*HD, D);
    wo (L, D, H*HD); ffn_norm (L, D); w1 (L, F, D); w2 (L, D, F); w3 (L, F, D); norm (D);
    freq_cis_real, freq_cis_imag (max_seq_len, HD/2) each -- skipped, we compute our own;
    output (V, D) only when vocab_size was negative.
version-1 `.bin` (export.py --version 1): a 256-byte header
    uint32 magic 0x616b3432 ("ak42"), int32 version = 1, the same 7 int32 (vocab_size positive),
    uint8 shared_classifier, zero padding to 256 bytes; then float32:
    attention_norm (L, D); ffn_norm (L, D); norm (D); tok_embeddings (V, D); wq; wk; wv; wo;
    w1; w2; w3 (each all L layers); output (V, D) only when not shared. No RoPE tables.
training `.pt` (train.py's ckpt.pt): a torch pickle {"model_args": {...}, "model": state_dict,
    "optimizer": ..., ...}; names may carry torch.compile's "_orig_mod." prefix. Read with our
    torch-free reader; only the "model" tensors are ever touched.

Weights are memory-mapped: a tensor is read when the converter asks for it, never the whole file.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ModelArgs, foreign_values
from ..bounds import n_elements
from ..errors import LlamaNpError
from .hf import check_shapes
from .pth import LazyTensor, load_pth

MAGIC = 0x616B3432               # "ak42" as a little-endian uint32 (the bytes b"24ka" on disk)
V1_HEADER_BYTES = 256
LEGACY_HEADER_BYTES = 7 * 4
PT_PREFIX = "_orig_mod."         # torch.compile's wrapper prefix in state dict keys
PT_IGNORED = {"freqs_cos", "freqs_sin", "freqs_cis", "rope.freqs"}  # precomputed RoPE buffers


@dataclass(frozen=True)
class BinHeader:
    version: int                 # 0 = legacy, 1 = version-1
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int              # always positive here
    max_seq_len: int
    shared_classifier: bool
    data_offset: int             # bytes before the first float


def _plausible(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len) -> bool:
    """Could these 7 ints be a llama2.c header? (Used to tell a legacy .bin from other files.)"""
    sizes = (dim, hidden_dim, n_layers, n_heads, n_kv_heads, abs(vocab_size), max_seq_len)
    return (all(0 < v < 1 << 24 for v in sizes) and dim % n_heads == 0 and n_heads % n_kv_heads == 0
            and (dim // n_heads) % 2 == 0)


def read_header(path: Path) -> BinHeader:
    """Parse the header of a legacy or version-1 llama2.c .bin."""
    try:
        with open(path, "rb") as f:
            head = f.read(V1_HEADER_BYTES)
    except FileNotFoundError:
        raise LlamaNpError(f"{path}: not found") from None
    if len(head) >= 8 and struct.unpack("<I", head[:4])[0] == MAGIC:
        version = struct.unpack("<i", head[4:8])[0]
        if version != 1:
            raise LlamaNpError(f"{path}: llama2.c .bin version {version} is not supported (version 2 is "
                               f"int8-quantized); export float32 with --version 0 or 1, or convert the .pt")
        if len(head) < V1_HEADER_BYTES:
            raise LlamaNpError(f"{path}: truncated llama2.c header ({len(head)} of {V1_HEADER_BYTES} bytes)")
        ints = struct.unpack("<7i", head[8:36])
        if not _plausible(*ints) or ints[5] <= 0:
            raise LlamaNpError(f"{path}: corrupt llama2.c version-1 header {ints}")
        return BinHeader(1, *ints[:5], ints[5], ints[6], bool(head[36]), V1_HEADER_BYTES)
    if len(head) < LEGACY_HEADER_BYTES or not _plausible(*struct.unpack("<7i", head[:28])):
        raise LlamaNpError(f"{path}: not a llama2.c .bin (neither the 'ak42' magic nor a plausible "
                           f"7-int header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len)")
    ints = struct.unpack("<7i", head[:28])
    return BinHeader(0, *ints[:5], abs(ints[5]), ints[6], ints[5] > 0, LEGACY_HEADER_BYTES)


def is_zip(path: Path) -> bool:
    """torch.save's files are zip archives: they begin with a local file header "PK\\x03\\x04"."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def looks_like_bin(path: Path) -> bool:
    """The "ak42" magic (any version: unsupported ones are refused with a reason later), or a
    plausible legacy header."""
    with open(path, "rb") as f:
        if f.read(4) == struct.pack("<I", MAGIC):
            return True
    try:
        read_header(path)
        return True
    except LlamaNpError:
        return False


def float_count(h: BinHeader) -> int:
    """How many float32 the header's shapes add up to (the sum of tensor_layout's sizes, in closed form)."""
    D, F, V, L, HD = h.dim, h.hidden_dim, h.vocab_size, h.n_layers, h.dim // h.n_heads
    per_layer = 2 * D + 2 * h.n_heads * HD * D + 2 * h.n_kv_heads * HD * D + 3 * F * D
    rope = 2 * h.max_seq_len * (HD // 2) if h.version == 0 else 0
    return V * D + L * per_layer + D + rope + (0 if h.shared_classifier else V * D)


def _per_layer(h: BinHeader, name: str, shape: tuple) -> list[tuple[str, tuple]]:
    """All layers' copies of one tensor, stored one after another: layers.0.<name>, layers.1.<name>, ..."""
    return [(f"layers.{i}.{name}", shape) for i in range(h.n_layers)]


def tensor_layout(h: BinHeader) -> list[tuple[str | None, tuple]]:
    """(Meta name, shape) of every float32 block in file order; None marks a block we skip."""
    D, F, V, HD = h.dim, h.hidden_dim, h.vocab_size, h.dim // h.n_heads
    q, kv = (h.n_heads * HD, D), (h.n_kv_heads * HD, D)
    attention = (_per_layer(h, "attention.wq.weight", q) + _per_layer(h, "attention.wk.weight", kv)
                 + _per_layer(h, "attention.wv.weight", kv) + _per_layer(h, "attention.wo.weight", (D, h.n_heads * HD)))
    ffn = (_per_layer(h, "feed_forward.w1.weight", (F, D)) + _per_layer(h, "feed_forward.w2.weight", (D, F))
           + _per_layer(h, "feed_forward.w3.weight", (F, D)))
    attention_norm, ffn_norm = _per_layer(h, "attention_norm.weight", (D,)), _per_layer(h, "ffn_norm.weight", (D,))
    if h.version == 0:
        rope_tables = [(None, (h.max_seq_len, HD // 2)), (None, (h.max_seq_len, HD // 2))]  # freq_cis_real, _imag
        layout = ([("tok_embeddings.weight", (V, D))] + attention_norm + attention + ffn_norm + ffn
                  + [("norm.weight", (D,))] + rope_tables)
    else:
        layout = (attention_norm + ffn_norm + [("norm.weight", (D,)), ("tok_embeddings.weight", (V, D))]
                  + attention + ffn)
    if not h.shared_classifier:
        layout.append(("output.weight", (V, D)))
    return layout


def read_llama2c_bin(path: Path, max_seq_len: int | None = None):
    """-> (ModelArgs, [(name, load)]); load() is a zero-copy float32 view of the memory-mapped file."""
    h = read_header(path)
    n_floats = float_count(h)                 # before any list of layers is built: n_layers may be a lie
    expected, size = h.data_offset + 4 * n_floats, path.stat().st_size
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise LlamaNpError(f"{path}: file is {what}: {size} bytes, but its llama2.c header "
                           f"(dim {h.dim}, hidden_dim {h.hidden_dim}, n_layers {h.n_layers}, vocab_size "
                           f"{h.vocab_size}, max_seq_len {h.max_seq_len}) needs {expected}")
    args = ModelArgs(dim=h.dim, n_layers=h.n_layers, n_heads=h.n_heads, n_kv_heads=h.n_kv_heads,
                     vocab_size=h.vocab_size, hidden_dim=h.hidden_dim, norm_eps=1e-5, rope_theta=10000.0,
                     max_seq_len=max_seq_len or h.max_seq_len)
    floats = np.memmap(path, dtype="<f4", mode="r", offset=h.data_offset, shape=(n_floats,))  # (n_floats,)
    tensors, start = [], 0
    for name, shape in tensor_layout(h):
        count = n_elements(shape)
        if name is not None:
            tensors.append((name, _view(floats, start, shape)))
        start += count
    if h.shared_classifier:
        tensors.append(("output.weight", dict(tensors)["tok_embeddings.weight"]))
    return args, tensors


def _view(floats: np.memmap, start: int, shape: tuple):
    return lambda: floats[start:start + n_elements(shape)].reshape(shape)


def _pt_state(path: Path, ckpt) -> dict[str, LazyTensor]:
    """The "model" state dict of a train.py checkpoint, "_orig_mod." prefixes and RoPE buffers removed."""
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model_args"), dict)
            and isinstance(ckpt.get("model"), dict)):
        raise LlamaNpError(f"{path}: not a llama2.c training checkpoint (expected a dict with 'model_args' "
                           f"and 'model', as llama2.c's train.py saves; for a Hugging Face pytorch_model.bin "
                           f"give its directory, with config.json)")
    state = {}
    for name, tensor in ckpt["model"].items():
        name = name.removeprefix(PT_PREFIX)
        if name in PT_IGNORED:
            continue
        if not isinstance(tensor, LazyTensor):
            raise LlamaNpError(f"{path}: model entry {name!r} is not a tensor")
        state[name] = tensor
    return state


def read_llama2c_pt(path: Path, max_seq_len: int | None = None):
    """-> (ModelArgs, [(name, load)]) from a llama2.c training checkpoint (.pt), read without torch."""
    ckpt = load_pth(path)
    state = _pt_state(path, ckpt)
    margs = ckpt["model_args"]
    missing = [k for k in ("dim", "n_layers", "n_heads", "vocab_size", "max_seq_len") if k not in margs]
    if missing or "layers.0.feed_forward.w1.weight" not in state or "tok_embeddings.weight" not in state:
        raise LlamaNpError(f"{path}: incomplete llama2.c checkpoint (model_args lacks {missing} "
                           f"or the model lacks its embedding / first layer)")
    with foreign_values(f"{path}: model_args"):
        args = ModelArgs(dim=margs["dim"], n_layers=margs["n_layers"], n_heads=margs["n_heads"],
                         n_kv_heads=margs.get("n_kv_heads") or margs["n_heads"], vocab_size=margs["vocab_size"],
                         hidden_dim=state["layers.0.feed_forward.w1.weight"].shape[0],  # llama2.c may round it
                         norm_eps=margs.get("norm_eps", 1e-5), rope_theta=10000.0,
                         max_seq_len=max_seq_len or margs["max_seq_len"])
    state.setdefault("output.weight", state["tok_embeddings.weight"])  # tied classifier
    check_shapes(path, args, {name: tuple(t.shape) for name, t in state.items()})
    return args, [(name, tensor.numpy) for name, tensor in state.items()]


def read_llama2c(path: Path, max_seq_len: int | None = None):
    """A llama2.c checkpoint file: a training .pt (a zip) or an exported .bin."""
    if not path.is_file():
        raise LlamaNpError(f"{path}: a llama2.c checkpoint is one file (.bin or .pt)"
                           if path.exists() else f"{path}: not found")
    if is_zip(path):
        return read_llama2c_pt(path, max_seq_len)
    return read_llama2c_bin(path, max_seq_len)
