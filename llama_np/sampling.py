"""Choosing the next token from logits (greedy, temperature, top-k, top-p), and scoring tokens.

`SamplingParams` holds every sampling setting, with the one set of defaults of this package
(Meta's where Meta has them: temperature 0.6, top-p 0.9, no length limit but the context). The
CLI, `text_completion`, `chat`, `stream` and `model.generate` all build one and hand it down.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LlamaNpError
from .layers import softmax


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    max_new_tokens: int | None = None  # None: until EOS or the end of the context (Meta's max_gen_len=None)
    temperature: float = 0.6           # 0 = greedy (argmax)
    top_p: float = 0.9                 # nucleus: keep the most likely tokens whose mass reaches top_p
    top_k: int = 0                     # keep only the k most likely tokens; 0 = off
    seed: int | None = None            # None: a fresh random stream every time

    def __post_init__(self):
        if self.max_new_tokens is not None and (not _is_int(self.max_new_tokens) or self.max_new_tokens < 0):
            raise LlamaNpError(f"max_new_tokens must be a non-negative integer (or None), got {self.max_new_tokens}")
        if not (_is_real(self.temperature) and self.temperature >= 0 and np.isfinite(self.temperature)):
            raise LlamaNpError(f"temperature must be >= 0, got {self.temperature}")
        if not (_is_real(self.top_p) and 0 < self.top_p <= 1):
            raise LlamaNpError(f"top_p must be in (0, 1], got {self.top_p}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise LlamaNpError(f"top_k must be a non-negative integer (0 = off), got {self.top_k}")
        if self.seed is not None and not _is_int(self.seed):
            raise LlamaNpError(f"seed must be an integer (or None), got {self.seed!r}")

    def new_tokens_within(self, room: int) -> int:
        """How many new tokens to generate when `room` positions are left in the context."""
        return room if self.max_new_tokens is None else min(self.max_new_tokens, room)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def top_p_filter(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Meta's sample_top_p: keep the smallest set of most likely tokens whose mass reaches top_p.  (V,) -> (V,)"""
    order = np.argsort(-probs, kind="stable")                  # (V,) most likely first
    sorted_probs = probs[order]
    cumulative = np.cumsum(sorted_probs)
    drop = cumulative - sorted_probs > top_p                   # mass before this token already exceeds p
    kept = np.zeros_like(probs)
    kept[order[~drop]] = sorted_probs[~drop]
    return kept / kept.sum()


def top_k_filter(probs: np.ndarray, top_k: int) -> np.ndarray:
    """Keep the k most likely tokens.  (V,) -> (V,)"""
    if top_k <= 0 or top_k >= probs.size:
        return probs
    keep = np.argpartition(-probs, top_k - 1)[:top_k]
    kept = np.zeros_like(probs)
    kept[keep] = probs[keep]
    return kept / kept.sum()


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from the logits of one position (V,). temperature 0 is greedy (argmax)."""
    assert logits.ndim == 1, f"sample: expected logits (V,), got {logits.shape}"
    if params.temperature == 0:
        return int(np.argmax(logits))
    probs = softmax(logits.astype(np.float64) / params.temperature)   # (V,)
    probs = top_k_filter(probs, params.top_k)
    if params.top_p < 1.0:
        probs = top_p_filter(probs, params.top_p)
    return int(rng.choice(probs.size, p=probs))


def token_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log softmax(logits)[target] per position.  logits (B, T, V), targets (B, T) -> (B, T) float64"""
    assert logits.shape[:2] == targets.shape, f"token_logprobs: logits {logits.shape} vs targets {targets.shape}"
    peak = logits.max(axis=-1, keepdims=True)                                   # (B, T, 1)
    log_z = peak[..., 0].astype(np.float64) + np.log(np.exp(logits - peak).sum(axis=-1, dtype=np.float64))  # (B, T)
    picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]   # (B, T)
    return picked.astype(np.float64) - log_z
