"""The KV cache: plain arrays that the caller owns and the forward pass writes into.

Position p of layer l's keys for batch row b is `cache.k[l, b, p]` (KVH, HD) — already rotated,
as Meta caches them. Nothing is hidden: a notebook can look at (and plot) the whole cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelArgs


@dataclass
class KVCache:
    k: np.ndarray   # (n_layers, B, max_seq_len, KVH, HD) float32
    v: np.ndarray   # (n_layers, B, max_seq_len, KVH, HD) float32

    @classmethod
    def allocate(cls, args: ModelArgs, batch_size: int = 1, max_seq_len: int | None = None,
                 n_kv_heads: int | None = None) -> "KVCache":
        """Zeros for every layer. n_kv_heads: fewer than the model's for a tensor-parallel rank, which
        caches only its own kv heads (llama_np/parallel)."""
        shape = (args.n_layers, batch_size, max_seq_len or args.max_seq_len, n_kv_heads or args.n_kv_heads,
                 args.head_dim)
        return cls(k=np.zeros(shape, np.float32), v=np.zeros(shape, np.float32))

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
