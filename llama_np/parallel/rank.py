"""One rank of a tensor-parallel LLaMA: its slices of the weights, its slice of each KV cache, and
its part of each step of the forward pass. Pure NumPy: the same object runs inside a Ray actor
(ray_backend.py) or in this process (llama.py's InProcessRanks, for notebooks and tests).

The forward pass over N ranks is the single-process one (model.py) with two sums per layer:

    h = concat_k  embed_k(tokens)              each rank gathers its D/N embedding columns    (B, T, D)
    for each layer i:
        h = h + sum_k attention_branch_k(h)    all-reduce 1: the ranks' partial outputs of wo  (B, T, D)
        h = h + sum_k ffn_branch_k(h)          all-reduce 2: the ranks' partial outputs of w2  (B, T, D)
    logits = concat_k classifier_k(h)          each rank's V/N vocabulary rows                 (B, T, V)

Rank k's attention branch is model.attention_branch on its own arrays: H/N query heads and KVH/N
kv heads (its rows of wq, wk, wv), wo's columns of those heads, and its KVH/N heads of the KV
cache. Attention is per head, so nothing crosses ranks until wo: out = sum over heads of
wo[:, head] @ head_output, and each rank sums its own heads. Likewise the FFN is elementwise in its
F features until w2 sums over them. Every rank holds the whole residual stream h and the
(replicated) norm weights, so each computes the norms itself. With N = 1 this is Llama.forward.
"""
from __future__ import annotations

import functools

import numpy as np

from ..errors import LlamaNpError
from ..kernels import check_matrix, gather_rows
from ..kv_cache import KVCache
from ..layers import rope_tables
from ..model import attention_branch, classifier, ffn_branch, positions
from ..precision import working_weights
from .ranks import rank_info, read_rank_dir
from .split import rank_shapes


def all_reduce(parts) -> np.ndarray:
    """The sum of the ranks' partial outputs, in rank order: whoever sums them gets the same bits."""
    return functools.reduce(np.add, parts)


def all_gather(parts) -> np.ndarray:
    """The ranks' slices of the last axis (embedding columns, vocabulary rows) side by side."""
    return np.concatenate(parts, axis=-1)


class RankRunner:
    """Rank `rank` of `world_size`, over its directory rank-KK-of-NN (memory-mapped)."""

    def __init__(self, rank_dir, rank: int, world_size: int, fp32: str = "auto"):
        args, weights, config = read_rank_dir(rank_dir, rank, world_size)
        self.info = rank_info(rank_dir, rank, world_size, weights, config)
        self.config, self.rank, self.world_size = args, rank, world_size
        self.weights = working_weights(weights, fp32)             # the load policy of llama_np.load
        for name, shape in rank_shapes(args, world_size).items():
            if len(shape) == 2:
                check_matrix(name, self.weights[name])
        self.rope_cos, self.rope_sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        self.caches: dict[int, KVCache] = {}   # cache id -> this rank's kv heads of the caller's cache
        self.step = None                       # (start_pos, cache, cos, sin, mask) of the pass under way
        self.h = None                          # the residual stream (B, T, D) when the ranks sum it themselves

    def new_cache(self, cache_id: int, batch_size: int, max_seq_len: int) -> None:
        self.caches[cache_id] = KVCache.allocate(self.config, batch_size, max_seq_len,
                                                 n_kv_heads=self.config.n_kv_heads // self.world_size)

    def free_cache(self, cache_id: int) -> None:
        self.caches.pop(cache_id, None)

    # ---- the steps of one forward pass; each takes the whole residual stream h (B, T, D)
    def embed(self, tokens: np.ndarray, start_pos: int, cache_id: int) -> np.ndarray:
        """Start a pass: this rank's columns of the embeddings of `tokens` (B, T) -> (B, T, D/N)."""
        if cache_id not in self.caches:
            raise LlamaNpError(f"rank {self.rank}: no KV cache {cache_id} (freed, or made for another model)")
        T = tokens.shape[1]
        self.step = (start_pos, self.caches[cache_id], *positions(self.rope_cos, self.rope_sin, start_pos, T))
        return gather_rows(self.weights["tok_embeddings.weight"], tokens)                 # (B, T, D/N)

    def attention(self, i: int, h: np.ndarray) -> np.ndarray:
        """This rank's part of layer i's attention branch.  (B, T, D) -> (B, T, D)"""
        start_pos, cache, cos, sin, mask = self.step
        return attention_branch(h, self.weights, i, cache, start_pos, cos, sin, mask, self.config.norm_eps)

    def feed_forward(self, i: int, h: np.ndarray) -> np.ndarray:
        """This rank's part of layer i's feed-forward branch.  (B, T, D) -> (B, T, D)"""
        return ffn_branch(h, self.weights, i, self.config.norm_eps)

    def logits(self, h: np.ndarray) -> np.ndarray:
        """End the pass: this rank's vocabulary slice of the logits.  (B, T, D) -> (B, T, V/N)"""
        self.step = None
        return classifier(h, self.weights, self.config.norm_eps)

    # ---- the same steps when the ranks sum among themselves: each receives the N parts of the
    # ---- step before (layer 0: the embedding columns) and keeps its own copy of h
    def attention_of(self, i: int, *parts: np.ndarray) -> np.ndarray:
        self.h = all_gather(parts) if i == 0 else self.h + all_reduce(parts)             # (B, T, D)
        return self.attention(i, self.h)

    def feed_forward_of(self, i: int, *parts: np.ndarray) -> np.ndarray:
        self.h = self.h + all_reduce(parts)                                               # (B, T, D)
        return self.feed_forward(i, self.h)

    def logits_of(self, *parts: np.ndarray) -> np.ndarray:
        h, self.h = self.h + all_reduce(parts), None                                      # (B, T, D)
        return self.logits(h)


def forward_summed_here(call_all, n_layers: int, tokens: np.ndarray, start_pos: int, cache_id: int) -> list:
    """The forward pass over N ranks with both sums of every layer done by the caller (the driver):
    call_all(method, *args) runs a RankRunner method on every rank and returns their results in
    rank order. -> each rank's logits slice (B, T, V/N)."""
    h = all_gather(call_all("embed", tokens, start_pos, cache_id))                       # (B, T, D)
    for i in range(n_layers):
        h = h + all_reduce(call_all("attention", i, h))                                   # (B, T, D)
        h = h + all_reduce(call_all("feed_forward", i, h))                                # (B, T, D)
    return call_all("logits", h)                                                          # N x (B, T, V/N)
