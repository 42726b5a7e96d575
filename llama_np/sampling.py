"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus)."""
from __future__ import annotations

import numpy as np

from .errors import LlamaNpError
from .layers import softmax


def check_sampling(temperature: float, top_p: float, top_k: int) -> None:
    if not (temperature >= 0 and np.isfinite(temperature)):
        raise LlamaNpError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise LlamaNpError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise LlamaNpError(f"top_k must be a non-negative integer (0 = off), got {top_k}")


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


def sample(logits: np.ndarray, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
           rng: np.random.Generator | None = None) -> int:
    """One token id from the logits of one position (V,). temperature 0 is greedy (argmax)."""
    assert logits.ndim == 1, f"sample: expected logits (V,), got {logits.shape}"
    if temperature == 0:
        return int(np.argmax(logits))
    probs = softmax(logits.astype(np.float64) / temperature)   # (V,)
    probs = top_k_filter(probs, top_k)
    if top_p < 1.0:
        probs = top_p_filter(probs, top_p)
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(probs.size, p=probs))
