"""ModelArgs: the shape of a LLaMA 2 model, with Meta's field names (params.json).

Every derived value (n_kv_heads default, hidden_dim, head_dim, n_rep) is computed here and
nowhere else. Generation settings (temperature, top_p, ...) do not belong here.
"""
from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import LlamaNpError

DEFAULT_MAX_SEQ_LEN = 4096  # LLaMA 2's context length; Meta's params.json does not record it
MAX_CONTEXT = 1 << 17       # positions: the rotary tables of a longer context would take more RAM than a model
MAX_LAYERS = 1024           # LLaMA 2 70B has 80; a config that says 2**31 must not make us list 2**31 layers


@contextmanager
def foreign_values(what):
    """Around code that computes with values read from a config file: a value of the wrong type or
    range (a string for dim, a list for norm_eps, ...) is a one-line LlamaNpError naming the file."""
    try:
        yield
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError, ZeroDivisionError) as e:
        raise LlamaNpError(f"{what}: a value has the wrong type or is out of range ({type(e).__name__}: "
                           f"{str(e)[:100]})") from None


def llama_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The FFN width rule of Meta's model.py: 2/3 of 4*dim, scaled, rounded up to multiple_of."""
    hidden_dim = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden_dim = int(ffn_dim_multiplier * hidden_dim)
    return multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)


@dataclass(frozen=True, kw_only=True)
class ModelArgs:
    dim: int                      # D, the width of the residual stream
    n_layers: int                 # L
    n_heads: int                  # H, query heads
    n_kv_heads: int               # KVH, key/value heads (GQA: H is a multiple of KVH)
    vocab_size: int               # V
    hidden_dim: int               # F, the SwiGLU width
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN

    def __post_init__(self):
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LlamaNpError(f"config: {name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise LlamaNpError(f"config: dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise LlamaNpError(f"config: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise LlamaNpError(f"config: head_dim {self.head_dim} must be even for rotary embeddings")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")):
                raise LlamaNpError(f"config: {name} must be a positive number, got {value!r:.40}")
        if self.n_layers > MAX_LAYERS:
            raise LlamaNpError(f"config: n_layers {self.n_layers} is beyond the {MAX_LAYERS} llama_np supports")
        if self.max_seq_len > MAX_CONTEXT:
            raise LlamaNpError(f"config: max_seq_len {self.max_seq_len} is beyond the {MAX_CONTEXT} positions "
                               f"llama_np supports")

    @property
    def head_dim(self) -> int:    # HD
        return self.dim // self.n_heads

    @property
    def n_rep(self) -> int:       # query heads that share one kv head
        return self.n_heads // self.n_kv_heads

    @classmethod
    def from_meta_params(cls, params: dict, tokenizer_vocab_size: int | None = None,
                         max_seq_len: int | None = None) -> "ModelArgs":
        """Meta's params.json -> ModelArgs (vocab_size -1 means: the tokenizer's size)."""
        for key in ("dim", "n_layers", "n_heads", "norm_eps"):
            if key not in params:
                raise LlamaNpError(f"params.json: missing key {key!r}")
        vocab_size = params.get("vocab_size", -1)
        if vocab_size is None or (isinstance(vocab_size, int) and vocab_size <= 0):
            if tokenizer_vocab_size is None:
                raise LlamaNpError("params.json: vocab_size is -1 and no tokenizer.model gives the vocabulary size")
            vocab_size = tokenizer_vocab_size
        return cls(
            dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"],
            n_kv_heads=params.get("n_kv_heads") or params["n_heads"],
            vocab_size=vocab_size,
            hidden_dim=llama_hidden_dim(params["dim"], params.get("multiple_of", 256),
                                        params.get("ffn_dim_multiplier")),
            norm_eps=params["norm_eps"],
            rope_theta=params.get("rope_theta", 10000.0),
            max_seq_len=max_seq_len or params.get("max_seq_len") or DEFAULT_MAX_SEQ_LEN,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArgs":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim") if n not in d]
        if missing:
            raise LlamaNpError(f"config.json: missing keys {missing}")
        return cls(**{k: v for k, v in d.items() if k in names})


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise LlamaNpError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LlamaNpError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise LlamaNpError(f"{path}: expected a JSON object")
    return data
