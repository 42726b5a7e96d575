"""Text completion over the model, the way Meta's llama/generation.py does it, plus streaming.

There is one decode loop, `Decoder.steps`, and it is Meta's `Llama.generate`: one KV cache for
a batch of B prompts, right-padded; every row is fed one position per step from the shortest
prompt's end on; while a row is still inside its prompt its next token is forced from the prompt,
after that it is sampled; each row ends at its own EOS, at its token budget, or when the caller
stops it (a stop sequence). The loop yields each step's new tokens, so everything is built on it:

    stream / generate        B = 1, the step's token turned into text as it comes (text.py)
    generate_batch           B prompts -> their new ids (and log-probabilities, echo)
    text_completion          Meta's text_completion: generate_batch -> text
    chat / chat_completion   the same over LLaMA 2 chat prompts (chat.py)

As in Meta's code the cache is sized to prompt + new tokens (capped at the context), so a short
answer from a 7B model does not allocate the full 4096-position cache. Sampling settings arrive
as one `SamplingParams` (sampling.py); public functions take them as keyword arguments.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .errors import LlamaNpError
from .sampling import SamplingParams, sample, token_logprobs
from .text import RowText, check_stop, collect_text


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
        raise LlamaNpError("this model has no tokenizer.model, so it cannot turn text into tokens (or tokens "
                           "into text): pass token ids to model.generate, or convert it again with --tokenizer PATH")
    return model.tokenizer


def prompt_ids(model, prompt, bos: bool = True) -> list[int]:
    """Text -> ids with BOS (needs the tokenizer); a list of ids is taken as it is."""
    if isinstance(prompt, str):
        return need_tokenizer(model).encode(prompt, bos=bos, eos=False)
    ids = [int(i) for i in prompt]
    if not ids:
        raise LlamaNpError("the prompt is empty")
    return ids


def check_prompts(model, prompts: list[list[int]]) -> None:
    """Refuse prompts that are empty, hold ids outside the vocabulary or leave no room in the context."""
    max_seq_len, vocab_size = model.config.max_seq_len, model.config.vocab_size
    if not prompts:
        raise LlamaNpError("no prompts to complete")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise LlamaNpError(f"prompt {i} is empty")
        if len(prompt) >= max_seq_len:
            raise LlamaNpError(f"the prompt is {len(prompt)} tokens; the model's context is {max_seq_len} "
                               f"(max_seq_len), which leaves no room to generate")
        if min(prompt) < 0 or max(prompt) >= vocab_size:
            raise LlamaNpError(f"prompt {i} holds token ids outside [0, {vocab_size})")


class Decoder:
    """One batched generation (Meta's Llama.generate): the state of the loop, and the loop.

    tokens (B, total_len): each row's prompt, then what it generates (EOS-filled beyond);
    end (B,): where each row's output ends so far; done (B,): rows that are finished.
    """

    def __init__(self, model, prompt_tokens: list[list[int]], params: SamplingParams, logprobs: bool = False,
                 stats: GenerationStats | None = None):
        prompts = [[int(t) for t in p] for p in prompt_tokens]
        check_prompts(model, prompts)
        self.model, self.params, self.stats = model, params, stats if stats is not None else GenerationStats()
        self.eos = model.tokenizer.eos_id if model.tokenizer is not None else 2
        self.lens = np.array([len(p) for p in prompts])                                # (B,)
        max_seq_len = model.config.max_seq_len
        n_new = params.new_tokens_within(max_seq_len - int(self.lens.min()))
        self.total_len = min(max_seq_len, int(self.lens.max()) + n_new)
        B = len(prompts)
        self.tokens = np.full((B, self.total_len), self.eos, dtype=np.int64)           # (B, total_len)
        for b, p in enumerate(prompts):
            self.tokens[b, :len(p)] = p
        self.in_prompt = np.arange(self.total_len)[None, :] < self.lens[:, None]       # (B, total_len)
        self.logprobs = np.zeros((B, self.total_len)) if logprobs else None            # (B, total_len)
        self.end = np.minimum(self.lens + n_new, self.total_len)                       # (B,)
        self.done = self.end <= self.lens                                              # (B,) nothing to generate
        self.n_new = n_new
        self.pos = 0
        self.stats.prompt_tokens = int(self.lens.sum())

    def steps(self) -> Iterator[np.ndarray]:
        """Run the loop; after each step yield its new tokens (B,), -1 for rows that got none."""
        rng = np.random.default_rng(self.params.seed)
        cache = self.model.new_cache(batch_size=len(self.lens), max_seq_len=self.total_len)
        prev_pos = 0
        for cur_pos in range(int(self.lens.min()), self.total_len):
            if self.done.all():
                break
            t0 = time.perf_counter()
            logits = self.model.forward(self.tokens[:, prev_pos:cur_pos], start_pos=prev_pos, cache=cache)  # (B, T, V)
            self._record_time(prev_pos, time.perf_counter() - t0)
            generating = ~self.in_prompt[:, cur_pos] & ~self.done                      # (B,)
            new = np.full(len(self.lens), -1, dtype=np.int64)                          # (B,)
            for b in np.flatnonzero(generating):                                       # rows in order: one rng stream
                new[b] = sample(logits[b, -1], self.params, rng)
            self.tokens[:, cur_pos] = np.where(generating, new, self.tokens[:, cur_pos])
            if self.logprobs is not None:
                self.logprobs[:, prev_pos + 1:cur_pos + 1] = token_logprobs(logits, self.tokens[:, prev_pos + 1:cur_pos + 1])
            at_eos = generating & (new == self.eos)
            self.end = np.where(at_eos, cur_pos, self.end)                             # EOS is not part of the output
            new[at_eos] = -1
            self.done |= at_eos | (generating & (cur_pos + 1 >= self.end))
            self.pos = prev_pos = cur_pos
            self.stats.new_tokens += int((new >= 0).sum())
            if (new >= 0).any():
                yield new

    def stop(self, row: int) -> None:
        """End a row after the token it was just given (a stop sequence was seen)."""
        self.end[row], self.done[row] = min(self.end[row], self.pos + 1), True

    def _record_time(self, start_pos: int, seconds: float) -> None:
        if start_pos == 0:
            self.stats.prefill_seconds += seconds
        else:
            self.stats.decode_seconds += seconds

    def results(self, echo: bool = False) -> tuple[list[list[int]], list[list[float]] | None]:
        """(tokens per row, logprobs per row or None): the new tokens, or prompt + new with echo."""
        if self.logprobs is not None and self.n_new == 0:                # nothing to generate: score the prompts
            logits = self.model.forward(self.tokens, 0)[:, :-1]                           # (B, total_len-1, V)
            self.logprobs[:, 1:] = token_logprobs(logits, self.tokens[:, 1:])
        starts = np.zeros_like(self.lens) if echo else self.lens
        rows = range(len(self.lens))
        tokens = [self.tokens[b, starts[b]:self.end[b]].tolist() for b in rows]
        logprobs = None if self.logprobs is None else [self.logprobs[b, starts[b]:self.end[b]].tolist() for b in rows]
        return tokens, logprobs


def generate_batch(model, prompt_tokens: list[list[int]], *, logprobs: bool = False, echo: bool = False,
                   **sampling) -> tuple[list[list[int]], list[list[float]] | None]:
    """Meta's Llama.generate over several prompts at once -> (tokens per row, logprobs per row or None).

    Each row's tokens are its new tokens (with echo: its prompt, then its new tokens), cut at its
    own EOS (not included) or after max_new_tokens. logprobs[b][j] is log p(token j | the tokens
    before it) under the model's raw distribution (no temperature), 0.0 for the first token of the
    sequence, as Meta. `sampling`: the fields of SamplingParams.
    """
    decoder = Decoder(model, prompt_tokens, SamplingParams(**sampling), logprobs)
    for _ in decoder.steps():
        pass
    return decoder.results(echo)


def complete(model, prompt_tokens: list[list[int]], params: SamplingParams, logprobs: bool, echo: bool,
             stop: list[str] | None) -> list[dict]:
    """The batch behind text_completion and chat_completion: each row's text is decoded as it is
    generated (so a stop sequence ends the row at once) -> Meta's result dicts."""
    tok, stop = need_tokenizer(model), check_stop(stop)
    decoder = Decoder(model, prompt_tokens, params, logprobs)
    rows = [RowText(tok, stop, context=p if echo else ()) for p in prompt_tokens]
    texts = [tok.decode(p) if echo else "" for p in prompt_tokens]
    for new in decoder.steps():
        for b in np.flatnonzero(new >= 0):
            out, stopped = rows[b].push(new[b])
            texts[b] += out
            if stopped:
                decoder.stop(b)
    texts = [text + row.flush() for text, row in zip(texts, rows)]
    out_tokens, out_logprobs = decoder.results(echo)
    return [completion_result(tok, text, ids, out_logprobs[b] if logprobs else None)
            for b, (text, ids) in enumerate(zip(texts, out_tokens))]


def completion_result(tok, generation, ids: list[int], logprobs: list[float] | None) -> dict:
    """One result of Meta's text_completion / chat_completion: {"generation": ...}, and with
    logprobs also each token's text ("tokens"), its id ("token_ids") and its "logprobs"."""
    result = {"generation": generation}
    if logprobs is not None:
        result.update(tokens=[tok.decode([t]) for t in ids], token_ids=ids, logprobs=logprobs)
    return result


def text_completion(model, prompts: list[str], *, logprobs: bool = False, echo: bool = False,
                    stop: list[str] | None = None, **sampling) -> list[dict]:
    """Meta's text_completion: [{"generation": text, ("tokens", "logprobs", "token_ids")}] per prompt,
    all prompts generated as one batch. `sampling`: the fields of SamplingParams."""
    if isinstance(prompts, str):
        raise LlamaNpError("text_completion takes a list of prompts")
    need_tokenizer(model)
    params = SamplingParams(**sampling)
    return complete(model, [prompt_ids(model, p) for p in prompts], params, logprobs, echo, stop)


def stream_ids(model, ids: list[int], params: SamplingParams, stop: list[str] | None = None,
               continuation: bool = True, stats: GenerationStats | None = None) -> Iterator[str]:
    """The decode loop with B = 1, each new token turned into text as it comes. Checks everything
    before it returns; the generator then yields text increments, ending before any stop string."""
    row = RowText(need_tokenizer(model), check_stop(stop), context=ids if continuation else ())
    decoder = Decoder(model, [ids], params, stats=stats)

    def increments() -> Iterator[str]:
        for new in decoder.steps():
            out, stopped = row.push(new[0])
            if out:
                yield out
            if stopped:
                return
        out = row.flush()
        if out:
            yield out
    return increments()


def stream(model, prompt, *, stop: list[str] | None = None, continuation: bool = True,
           stats: GenerationStats | None = None, **sampling) -> Iterator[str]:
    """Yield the new text in increments as it is generated, ending before any stop string.

    continuation=True: the increments continue the prompt (prompt + increments reads right, the
    first increment may begin with a space); False: they add up to decode(new ids), the text
    Meta's text_completion returns. `sampling`: the fields of SamplingParams.
    """
    return stream_ids(model, prompt_ids(model, prompt), SamplingParams(**sampling), stop, continuation, stats)


def generate(model, prompt, *, on_text: Callable[[str], None] | None = None, stats: GenerationStats | None = None,
             stop: list[str] | None = None, **sampling):
    """Complete a prompt. Text in -> the new text out, continuing the prompt (streamed to on_text as
    it is produced); token ids in -> the new ids out (no tokenizer needed)."""
    if isinstance(prompt, str):
        return collect_text(stream(model, prompt, stop=stop, stats=stats, **sampling), on_text)
    if stop is not None:
        raise LlamaNpError("stop sequences are text: give the prompt as text to use them")
    decoder = Decoder(model, [prompt_ids(model, prompt)], SamplingParams(**sampling), stats=stats)
    return [int(new[0]) for new in decoder.steps()]
