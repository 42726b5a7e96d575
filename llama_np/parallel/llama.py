"""TensorParallelLlama: LLaMA 2 with its weights and KV caches split over N ranks, behind the
interface of llama_np.Llama (config, tokenizer, forward, new_cache, generate, chat), so that
generation, chat and perplexity run on it unchanged.

The ranks are a group object -- ray_backend.RayRanks (one Ray actor per rank), or InProcessRanks
below (N RankRunners in this process: the same arithmetic without Ray) -- that offers:

    config, world_size                        the whole model's ModelArgs; N
    new_cache(cache_id, B, S) / free_cache    every rank allocates / frees its kv heads of a cache
    forward(tokens, start_pos, cache_id)      -> each rank's logits slice (B, T, V/N), in rank order
    close()
"""
from __future__ import annotations

import itertools
import weakref
from pathlib import Path

import numpy as np

from .. import chat as chat_module
from .. import generation
from ..errors import LlamaNpError
from ..model import cache_length, forward_inputs
from ..tokenizer import Tokenizer
from ..weights import TOKENIZER_FILE
from .rank import RankRunner, all_gather, forward_summed_here
from .ranks import check_same_model, find_rank_dirs

_cache_ids = itertools.count()


class RankCaches:
    """The caller's handle on a KV cache whose arrays live on the ranks, each rank holding its KVH/N
    kv heads (B, max_seq_len, KVH/N, HD) per layer. The ranks free them when the handle goes away."""

    def __init__(self, ranks, batch_size: int, max_seq_len: int):
        self.ranks, self.batch_size, self.max_seq_len = ranks, batch_size, max_seq_len
        self.cache_id = next(_cache_ids)
        ranks.new_cache(self.cache_id, batch_size, max_seq_len)
        weakref.finalize(self, ranks.free_cache, self.cache_id)


class TensorParallelLlama:
    """A model over N ranks (see the module docstring); `llama-np ... --tensor-parallel N` runs one."""

    def __init__(self, ranks, tokenizer: Tokenizer | None):
        self.ranks = ranks
        self.config = ranks.config
        self.world_size = ranks.world_size
        self.tokenizer = tokenizer
        if tokenizer is not None and tokenizer.n_words != self.config.vocab_size:
            raise LlamaNpError(f"tokenizer has {tokenizer.n_words} pieces but the model's vocab_size "
                               f"is {self.config.vocab_size}")

    def new_cache(self, batch_size: int = 1, max_seq_len: int | None = None) -> RankCaches:
        """An empty KV cache (its slices on the ranks) for batch_size sequences of up to max_seq_len."""
        return RankCaches(self.ranks, batch_size, cache_length(self.config, max_seq_len))

    def forward(self, tokens, start_pos: int = 0, cache: RankCaches | None = None,
                trace: dict | None = None) -> np.ndarray:
        """Logits for `tokens` (B, T) at positions start_pos .. start_pos+T-1 -> float32 (B, T, V),
        as Llama.forward (the vocabulary slices of the N ranks side by side)."""
        if trace is not None:
            raise LlamaNpError("forward: the tensor-parallel model records no trace (its intermediates live on "
                               "the ranks); trace the single-process model")
        tokens, cache = forward_inputs(self, tokens, start_pos, cache)
        if not isinstance(cache, RankCaches) or cache.ranks is not self.ranks:
            raise LlamaNpError("forward: this cache was not made by this model's new_cache")
        return all_gather(self.ranks.forward(tokens, start_pos, cache.cache_id))          # (B, T, V)

    def generate(self, prompt, **kwargs):
        """As Llama.generate."""
        return generation.generate(self, prompt, **kwargs)

    def chat(self, dialog, **kwargs) -> dict:
        """As Llama.chat."""
        return chat_module.chat(self, dialog, **kwargs)

    def close(self) -> None:
        """Stop the ranks (their processes, their memory maps)."""
        self.ranks.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class InProcessRanks:
    """N RankRunners in this process, the sums done here: tensor parallelism's arithmetic without Ray
    (the notebook shows it step by step; tests compare it with the Ray ranks)."""

    def __init__(self, model_dir, world_size: int, fp32: str = "auto"):
        paths = find_rank_dirs(model_dir, world_size)
        self.runners = [RankRunner(path, k, world_size, fp32) for k, path in enumerate(paths)]
        check_same_model([r.info for r in self.runners])
        self.config, self.world_size = self.runners[0].config, world_size
        self.tokenizer_path = paths[0] / TOKENIZER_FILE

    def call_all(self, method: str, *args) -> list:
        return [getattr(runner, method)(*args) for runner in self.runners]

    def new_cache(self, cache_id: int, batch_size: int, max_seq_len: int) -> None:
        self.call_all("new_cache", cache_id, batch_size, max_seq_len)

    def free_cache(self, cache_id: int) -> None:
        self.call_all("free_cache", cache_id)

    def forward(self, tokens, start_pos: int, cache_id: int) -> list[np.ndarray]:
        return forward_summed_here(self.call_all, self.config.n_layers, tokens, start_pos, cache_id)

    def close(self) -> None:
        self.runners = []


def open_in_process(model_dir, world_size: int, fp32: str = "auto") -> TensorParallelLlama:
    """The N ranks of MODEL_DIR in this process (no Ray): for seeing and testing the split."""
    ranks = InProcessRanks(model_dir, world_size, fp32)
    tok = Path(ranks.tokenizer_path)
    return TensorParallelLlama(ranks, Tokenizer(tok) if tok.is_file() else None)
