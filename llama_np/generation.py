"""Text completion over the model, the way Meta's llama/generation.py does it, plus streaming.

Two loops, both plain:
  * `generate_ids` — one prompt: prefill it in one forward call, then decode one token per call,
    yielding each new id as it comes (this is what streaming is built on).
  * `generate_batch` — several prompts at once, exactly as Meta's `Llama.generate`: one KV cache of
    batch B, prompts right-padded, every row fed one position per step from the shortest prompt's
    end on; while a row is still inside its prompt its next token is forced from the prompt, after
    that it is sampled; each row stops at its own EOS. It also gives per-token log-probabilities
    (`logprobs`) and can return the prompt with the answer (`echo`), as Meta's text_completion.

As in Meta's code the cache is sized to prompt + new tokens (capped at the context), so a short
answer from a 7B model does not allocate the full 4096-position cache.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

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


def need_tokenizer(model):
    """The model's tokenizer, or a clear error: a llama2.c model converted without one runs on ids only."""
    if model.tokenizer is None:
        raise LlamaNpError("this model has no tokenizer.model, so it cannot turn text into tokens: pass token "
                           "ids, or convert it again with --tokenizer PATH")
    return model.tokenizer


def collect_text(pieces: Iterable[str], on_text: Callable[[str], None] | None) -> str:
    """Join streamed text increments, handing each to on_text as it comes."""
    out = []
    for piece in pieces:
        out.append(piece)
        if on_text is not None:
            on_text(piece)
    return "".join(out)


def prompt_ids(model, prompt, bos: bool = True) -> list[int]:
    """Text -> ids with BOS (needs the tokenizer); a list of ids is taken as it is."""
    if isinstance(prompt, str):
        return need_tokenizer(model).encode(prompt, bos=bos, eos=False)
    ids = [int(i) for i in prompt]
    if not ids:
        raise LlamaNpError("the prompt is empty")
    return ids


def eos_id(model) -> int:
    return model.tokenizer.eos_id if model.tokenizer is not None else 2


def check_generation(model, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float,
                     top_k: int) -> None:
    """Refuse bad options and prompts that leave no room in the context (LlamaNpError)."""
    check_sampling(temperature, top_p, top_k)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise LlamaNpError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens}")
    max_seq_len = model.config.max_seq_len
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise LlamaNpError(f"prompt {i} is empty")
        if len(prompt) >= max_seq_len:
            raise LlamaNpError(f"the prompt is {len(prompt)} tokens; the model's context is {max_seq_len} "
                               f"(max_seq_len), which leaves no room to generate")


def generate_ids(model, prompt: list[int], max_new_tokens: int, temperature: float = 0.6,
                 top_p: float = 0.9, top_k: int = 0, seed: int | None = None,
                 stats: GenerationStats | None = None) -> Iterator[int]:
    """Yield new token ids one at a time; stops at EOS, after max_new_tokens, or at the context end."""
    check_generation(model, [prompt], max_new_tokens, temperature, top_p, top_k)
    if max_new_tokens == 0:
        return
    rng = np.random.default_rng(seed)
    eos = eos_id(model)
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt)
    cache = model.new_cache(batch_size=1, max_seq_len=min(model.config.max_seq_len, len(prompt) + max_new_tokens))

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


# ----------------------------------------------------------------------------------------------
# Batched generation, logprobs, echo (Meta's Llama.generate / text_completion)


def token_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log softmax(logits)[target] per position.  logits (B, T, V), targets (B, T) -> (B, T) float64"""
    assert logits.shape[:2] == targets.shape, f"token_logprobs: logits {logits.shape} vs targets {targets.shape}"
    peak = logits.max(axis=-1, keepdims=True)                                   # (B, T, 1)
    log_z = peak[..., 0].astype(np.float64) + np.log(np.exp(logits - peak).sum(axis=-1, dtype=np.float64))  # (B, T)
    picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]   # (B, T)
    return picked.astype(np.float64) - log_z


def next_tokens(logits: np.ndarray, active: np.ndarray, temperature: float, top_p: float, top_k: int,
                rng: np.random.Generator, filler: int) -> np.ndarray:
    """Sample one token per row from the last-position logits (B, V); rows not active get `filler`."""
    out = np.full(logits.shape[0], filler, dtype=np.int64)                     # (B,)
    for b in np.flatnonzero(active):                                           # rows in order: one rng stream
        out[b] = sample(logits[b], temperature, top_p, top_k, rng)
    return out


def generate_batch(model, prompt_tokens: list[list[int]], max_new_tokens: int, temperature: float = 0.6,
                   top_p: float = 0.9, top_k: int = 0, seed: int | None = None, logprobs: bool = False,
                   echo: bool = False, stop_fn: Callable[[int, list[int]], bool] | None = None,
                   ) -> tuple[list[list[int]], list[list[float]] | None]:
    """Meta's Llama.generate over several prompts at once -> (tokens per row, logprobs per row or None).

    Each row's tokens are its new tokens (with echo: its prompt, then its new tokens), cut at its
    own EOS (not included) or after max_new_tokens. logprobs[b][j] is log p(token j | the tokens
    before it) under the model's raw distribution (no temperature), 0.0 for the first token of the
    sequence, as Meta. stop_fn(row, new_tokens) -> True ends a row early (stop sequences).
    """
    prompt_tokens = [[int(t) for t in p] for p in prompt_tokens]
    check_generation(model, prompt_tokens, max_new_tokens, temperature, top_p, top_k)
    B, eos = len(prompt_tokens), eos_id(model)
    lens = np.array([len(p) for p in prompt_tokens])                           # (B,)
    total_len = min(model.config.max_seq_len, int(lens.max()) + max_new_tokens)
    tokens = np.full((B, total_len), eos, dtype=np.int64)                      # (B, total_len)
    for b, p in enumerate(prompt_tokens):
        tokens[b, :len(p)] = p
    in_prompt = np.arange(total_len)[None, :] < lens[:, None]                  # (B, total_len)
    lp = np.zeros((B, total_len), dtype=np.float64)                            # (B, total_len)
    end = np.minimum(lens + max_new_tokens, total_len)                         # (B,) where each row's output ends
    done = end <= lens                                                         # max_new_tokens == 0
    rng = np.random.default_rng(seed)
    cache = model.new_cache(batch_size=B, max_seq_len=total_len)

    prev_pos = 0
    for cur_pos in range(int(lens.min()), total_len):
        if done.all():
            break
        logits = model.forward(tokens[:, prev_pos:cur_pos], start_pos=prev_pos, cache=cache)  # (B, T, V)
        generating = ~in_prompt[:, cur_pos] & ~done                                          # (B,)
        sampled = next_tokens(logits[:, -1], generating, temperature, top_p, top_k, rng, filler=eos)
        tokens[:, cur_pos] = np.where(in_prompt[:, cur_pos], tokens[:, cur_pos], sampled)
        if logprobs:
            lp[:, prev_pos + 1:cur_pos + 1] = token_logprobs(logits, tokens[:, prev_pos + 1:cur_pos + 1])
        for b in np.flatnonzero(generating):
            if sampled[b] == eos:
                end[b], done[b] = cur_pos, True
            elif cur_pos + 1 >= end[b] or (stop_fn is not None and stop_fn(b, tokens[b, lens[b]:cur_pos + 1].tolist())):
                end[b], done[b] = cur_pos + 1, True
        prev_pos = cur_pos
    if logprobs and max_new_tokens == 0:                                       # nothing generated: score the prompts
        lp[:, 1:] = token_logprobs(model.forward(tokens, 0, cache)[:, :-1], tokens[:, 1:])

    starts = np.zeros(B, dtype=int) if echo else lens
    out_tokens = [tokens[b, starts[b]:end[b]].tolist() for b in range(B)]
    out_logprobs = [lp[b, starts[b]:end[b]].tolist() for b in range(B)] if logprobs else None
    return out_tokens, out_logprobs


def stop_checker(tokenizer, stop: list[str] | None) -> Callable[[int, list[int]], bool] | None:
    """stop_fn for generate_batch: True once a row's new text contains one of the stop strings."""
    stop = check_stop(stop)
    if not stop:
        return None
    return lambda row, new_ids: any(s in tokenizer.decode(new_ids) for s in stop)


def cut_at_stop(text: str, stop: list[str] | None, start: int = 0) -> str:
    """text up to (not including) the first stop string found at or after index start."""
    hits = [i for i in (text.find(s, start) for s in stop or []) if i >= 0]
    return text[:min(hits)] if hits else text


def text_completion(model, prompts: list[str], max_new_tokens: int | None = None, temperature: float = 0.6,
                    top_p: float = 0.9, top_k: int = 0, seed: int | None = None, logprobs: bool = False,
                    echo: bool = False, stop: list[str] | None = None) -> list[dict]:
    """Meta's text_completion: [{"generation": text, ("tokens", "logprobs", "token_ids")}] per prompt.

    max_new_tokens None means max_seq_len - 1, as Meta (the context is the real limit).
    """
    if isinstance(prompts, str):
        raise LlamaNpError("text_completion takes a list of prompts")
    tok = model.tokenizer
    prompt_tokens = [prompt_ids(model, p) for p in prompts]
    max_new_tokens = model.config.max_seq_len - 1 if max_new_tokens is None else max_new_tokens
    out_tokens, out_logprobs = generate_batch(model, prompt_tokens, max_new_tokens, temperature, top_p, top_k,
                                              seed, logprobs, echo, stop_checker(tok, stop))
    results = []
    for b, ids in enumerate(out_tokens):
        prompt_text_len = len(tok.decode(prompt_tokens[b])) if echo else 0
        results.append(completion_result(tok, cut_at_stop(tok.decode(ids), stop, prompt_text_len), ids,
                                         out_logprobs[b] if logprobs else None))
    return results


def completion_result(tok, generation, ids: list[int], logprobs: list[float] | None) -> dict:
    """One result of Meta's text_completion / chat_completion: {"generation": ...}, and with
    logprobs also each token's text ("tokens"), its id ("token_ids") and its "logprobs"."""
    result = {"generation": generation}
    if logprobs is not None:
        result.update(tokens=[tok.decode([t]) for t in ids], token_ids=ids, logprobs=logprobs)
    return result


# ----------------------------------------------------------------------------------------------
# Streaming


class TextStream:
    """Turns token ids into text increments that are safe to print as they come.

    SentencePiece decodes a piece "▁the" as " the" except at the very start of a decode, where the
    leading space is dropped (and some tokenizers drop all leading spaces there); and a character
    outside the vocabulary arrives as several byte tokens (<0xF0> <0x9F> <0x98> <0x80> = 😀), each
    of which alone decodes to U+FFFD. So we never decode a single token: we decode the window of
    ids from the last point where the text was complete (`prefix_offset`), after an anchor piece
    (so that the window is never at the start of a decode), and emit only what the newest ids add
    to that window's text; an increment that ends in U+FFFD (a character still being spelled) is
    held back until the character is complete.

    With `context` ids (the prompt) the increments continue that text: the prompt's text plus
    every increment equals decode(context + ids). Without, the increments add up to decode(ids).
    """

    def __init__(self, tokenizer, context: Iterable[int] = ()):
        self.tokenizer = tokenizer
        self.anchor = tokenizer.encode("a", bos=False)[-1:]   # a plain piece ("▁a") to decode after
        self.ids: list[int] = [int(t) for t in context]
        self.prefix_offset = 0                 # the window to decode starts here ...
        self.read_offset = len(self.ids)       # ... and its text up to here has been emitted

    def _decode_window(self, end: int) -> str:
        if self.prefix_offset == 0:            # the true start: decode exactly as decode(ids) does
            return self.tokenizer.decode(self.ids[:end])
        return self.tokenizer.decode(self.anchor + self.ids[self.prefix_offset:end])

    def _increment(self) -> str:
        prefix_text = self._decode_window(self.read_offset)
        text = self._decode_window(len(self.ids))
        assert text.startswith(prefix_text), f"TextStream: {text!r} does not continue {prefix_text!r}"
        return text[len(prefix_text):]

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        new = self._increment()
        if not new or new.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return new

    def flush(self) -> str:
        """What is still held back (an incomplete character at the end: U+FFFD, as decode gives it)."""
        new = self._increment()
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return new


class StopText:
    """Holds back text that might be the start of a stop sequence; never lets a stop sequence out.

    push(text) -> (text safe to emit, stopped). Whatever could still grow into a stop string (the
    longest tail of the pending text that begins one) waits for the next push.
    """

    def __init__(self, stop: list[str] | None):
        self.stop = check_stop(stop)
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        hold = max((k for s in self.stop for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def check_stop(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    stop = list(stop)
    if not all(isinstance(s, str) and s for s in stop):
        raise LlamaNpError(f"stop sequences must be non-empty strings, got {stop!r}")
    return stop


def stream_text(tokenizer, tokens: Iterable[int], stop: list[str] | None = None,
                context: Iterable[int] = ()) -> Iterator[str]:
    """Token ids (as they are generated) -> text increments, ending before any stop string (and
    then no further token is asked for). context: see TextStream."""
    stopper, text = StopText(stop), TextStream(tokenizer, context)
    for token in tokens:
        out, stopped = stopper.push(text.push(token))
        if out:
            yield out
        if stopped:
            return
    out, stopped = stopper.push(text.flush())
    out += "" if stopped else stopper.flush()
    if out:
        yield out


def stream(model, prompt: str, max_new_tokens: int = 64, temperature: float = 0.6, top_p: float = 0.9,
           top_k: int = 0, seed: int | None = None, stop: list[str] | None = None, continuation: bool = True,
           stats: GenerationStats | None = None) -> Iterator[str]:
    """Yield the new text in increments as it is generated, ending before any stop string.

    continuation=True: the increments continue the prompt (prompt + increments reads right, the
    first increment may begin with a space); False: they add up to decode(new ids), the text
    Meta's text_completion returns.
    """
    ids = prompt_ids(model, prompt)
    check_stop(stop)
    tokens = generate_ids(model, ids, max_new_tokens, temperature, top_p, top_k, seed, stats)
    return stream_text(model.tokenizer, tokens, stop, context=ids if continuation else ())


def generate(model, prompt, max_new_tokens: int = 64, temperature: float = 0.6, top_p: float = 0.9,
             top_k: int = 0, seed: int | None = None, on_text: Callable[[str], None] | None = None,
             stats: GenerationStats | None = None, stop: list[str] | None = None):
    """Complete a prompt. Text in -> the new text out, continuing the prompt (streamed to on_text as
    it is produced); token ids in -> the new ids out."""
    if not isinstance(prompt, str):
        return list(generate_ids(model, prompt_ids(model, prompt), max_new_tokens, temperature, top_p, top_k,
                                 seed, stats))
    return collect_text(stream(model, prompt, max_new_tokens, temperature, top_p, top_k, seed, stop, stats=stats),
                        on_text)
