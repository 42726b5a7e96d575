"""Perplexity of a text: teacher-forced negative log-likelihood, the usual check that a port is right.

The text (with BOS) is scored in windows of `context` tokens that start every `stride` tokens
(the sliding-window method of Hugging Face's perplexity guide). Each token after the BOS is scored
exactly once, in the first window that reaches it, from the logits of the position before it; so
it sees up to context - 1 tokens of left context (at least context - stride).

    window [begin, end):   tokens  x[begin] ... x[end-1]
    scored targets:        x[t] for t in [max(previous end, begin + 1), end)
    NLL(x[t]) = -log softmax(logits at t-1)[x[t]];   perplexity = exp(sum NLL / number scored)
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .errors import LlamaNpError
from .generation import prompt_ids, token_logprobs


@dataclass
class PerplexityResult:
    nll_sum: float = 0.0         # natural log
    n_scored: int = 0            # tokens scored (all but the first)
    n_windows: int = 0
    n_forward: int = 0           # tokens run through the model (windows overlap)
    seconds: float = 0.0
    context: int = 0
    stride: int = 0

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll_sum / self.n_scored))

    def summary(self) -> str:
        rate = self.n_forward / self.seconds if self.seconds else 0.0
        return (f"perplexity {self.perplexity:.4f} (mean NLL {self.nll_sum / self.n_scored:.4f} nats over "
                f"{self.n_scored} tokens; {self.n_windows} windows of up to {self.context} tokens, stride "
                f"{self.stride}); {self.n_forward} tokens in {self.seconds:.1f} s = {rate:.1f} tok/s")


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over n_tokens tokens."""
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        out.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n_tokens:
            break
    return out


def check_window(model, context, stride) -> tuple[int, int]:
    """Defaults (context: the model's max_seq_len; stride: half of it) and their checks."""
    max_seq_len = model.config.max_seq_len
    context = max_seq_len if context is None else context
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or not 2 <= context <= max_seq_len:
        raise LlamaNpError(f"context must be an integer in [2, {max_seq_len}] (the model's max_seq_len), got {context}")
    stride = max(1, context // 2) if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 1 <= stride <= context - 1:
        raise LlamaNpError(f"stride must be an integer in [1, context - 1] = [1, {context - 1}] so that every "
                           f"token is scored, got {stride}")
    return int(context), int(stride)


def window_nll(model, tokens: np.ndarray, begin: int, end: int, first: int) -> np.ndarray:
    """NLL of tokens[first:end] given the window tokens[begin:end].  -> (end - first,) float64"""
    logits = model.forward(tokens[None, begin:end], start_pos=0)               # (1, T, V)
    pred = logits[:, first - 1 - begin:end - 1 - begin]                        # (1, n, V) predicting tokens[first:end]
    return -token_logprobs(pred, tokens[None, first:end])[0]                  # (n,)


def perplexity_result(model, text_or_ids, context: int | None = None, stride: int | None = None,
                      progress: bool = False) -> PerplexityResult:
    """Score a text (or token ids) window by window; see the module docstring."""
    context, stride = check_window(model, context, stride)
    tokens = np.asarray(prompt_ids(model, text_or_ids), dtype=np.int64)       # (N,)
    if tokens.size < 2:
        raise LlamaNpError(f"perplexity needs at least 2 tokens (BOS and one more); the text has {tokens.size}")
    result = PerplexityResult(context=context, stride=stride)
    t0 = time.perf_counter()
    with tqdm(total=tokens.size - 1, unit="tok", disable=not progress, desc="perplexity") as bar:
        for begin, end, first in windows(tokens.size, context, stride):
            nll = window_nll(model, tokens, begin, end, first)
            result.nll_sum += float(nll.sum())
            result.n_scored += nll.size
            result.n_windows += 1
            result.n_forward += end - begin
            bar.update(nll.size)
            bar.set_postfix(ppl=f"{result.perplexity:.3f}")
    result.seconds = time.perf_counter() - t0
    return result


def perplexity(model, text, context: int | None = None, stride: int | None = None, progress: bool = False) -> float:
    """exp(mean NLL per token) of `text` (a str, or token ids) under the model."""
    return perplexity_result(model, text, context, stride, progress).perplexity
