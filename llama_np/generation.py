"""Text completion over the model: prefill the prompt once, then decode one token per forward.

As in Meta's generation.py the cache is sized to prompt + new tokens (capped at the context), so a
short answer from a 7B model does not allocate the full 4096-position cache.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .errors import LlamaNpError
from .sampling import check_sampling, sample


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    def summary(self) -> str:
        prefill = self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0
        decode = (self.new_tokens - 1) / self.decode_seconds if self.decode_seconds and self.new_tokens > 1 else 0.0
        return (f"{self.prompt_tokens} prompt tokens, {self.new_tokens} new tokens; "
                f"prefill {prefill:.1f} tok/s, decode {decode:.1f} tok/s")


def prompt_ids(model, prompt, bos: bool = True) -> list[int]:
    """Text -> ids with BOS (needs the tokenizer); a list of ids is taken as it is."""
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise LlamaNpError("this model has no tokenizer.model, so it cannot encode text: pass token "
                               "ids, or convert it again with --tokenizer PATH")
        return model.tokenizer.encode(prompt, bos=bos, eos=False)
    ids = [int(i) for i in prompt]
    if not ids:
        raise LlamaNpError("the prompt is empty")
    return ids


def generate_ids(model, prompt: list[int], max_new_tokens: int, temperature: float = 0.6,
                 top_p: float = 0.9, top_k: int = 0, seed: int | None = None,
                 stats: GenerationStats | None = None) -> Iterator[int]:
    """Yield new token ids one at a time; stops at EOS, after max_new_tokens, or at the context end."""
    check_sampling(temperature, top_p, top_k)
    if max_new_tokens < 0:
        raise LlamaNpError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    max_seq_len = model.config.max_seq_len
    if len(prompt) >= max_seq_len:
        raise LlamaNpError(f"the prompt is {len(prompt)} tokens; the model's context is {max_seq_len} "
                           f"(max_seq_len), which leaves no room to generate")
    if max_new_tokens == 0:
        return
    rng = np.random.default_rng(seed)
    eos = model.tokenizer.eos_id if model.tokenizer is not None else 2
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt)
    cache = model.new_cache(batch_size=1, max_seq_len=min(max_seq_len, len(prompt) + max_new_tokens))

    t0 = time.perf_counter()
    logits = model.forward(np.array([prompt]), start_pos=0, cache=cache)[0, -1]   # (V,)
    stats.prefill_seconds = time.perf_counter() - t0
    pos = len(prompt)
    t0 = time.perf_counter()
    while True:
        token = sample(logits, temperature, top_p, top_k, rng)
        if token == eos:
            return
        stats.new_tokens += 1
        yield token
        if stats.new_tokens >= max_new_tokens or pos >= cache.max_seq_len:
            return
        logits = model.forward(np.array([[token]]), start_pos=pos, cache=cache)[0, -1]  # (V,)
        stats.decode_seconds = time.perf_counter() - t0
        pos += 1


class TextStream:
    """Turns token ids into text increments that are safe to print as they come.

    SentencePiece drops the leading space of the first piece it decodes, so we decode after an
    anchor piece and cut the anchor off; and while the text ends in an incomplete UTF-8 sequence
    (a byte-fallback token such as <0xE2> not yet completed) we hold it back.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.anchor = tokenizer.encode("a", bos=False)[-1:]
        self.anchor_text = tokenizer.decode(self.anchor)
        self.ids: list[int] = []
        self.emitted = 0

    def text(self) -> str:
        return self.tokenizer.decode(self.anchor + self.ids)[len(self.anchor_text):]

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.text()
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[self.emitted:], len(text)
        return new

    def flush(self) -> str:
        text = self.text()
        new, self.emitted = text[self.emitted:], len(text)
        return new


def generate(model, prompt, max_new_tokens: int = 64, temperature: float = 0.6, top_p: float = 0.9,
             top_k: int = 0, seed: int | None = None, on_text: Callable[[str], None] | None = None,
             stats: GenerationStats | None = None):
    """Complete a prompt. Text in -> the new text out (streamed to on_text as it is produced);
    token ids in -> the new ids out."""
    ids = prompt_ids(model, prompt)
    tokens = generate_ids(model, ids, max_new_tokens, temperature, top_p, top_k, seed, stats)
    if not isinstance(prompt, str):
        return list(tokens)
    stream = TextStream(model.tokenizer)
    for token in tokens:
        piece = stream.push(token)
        if piece and on_text is not None:
            on_text(piece)
    rest = stream.flush()
    if rest and on_text is not None:
        on_text(rest)
    return stream.text()
