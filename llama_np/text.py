"""Generated ids -> text, increment by increment, and stop sequences: the text side of generation.

`TextStream` turns ids into text that is safe to print as it comes; `StopText` holds back what
could be the start of a stop sequence; `RowText` is the two together, one per generated row.
Nothing here re-decodes a row's whole text at each step: only a short window of recent ids.
"""
from __future__ import annotations

from typing import Callable, Iterable

from .errors import LlamaNpError


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


class RowText:
    """One row's new text with stop sequences: push(token) -> (text safe to emit, stopped).

    context: see TextStream (the prompt's ids, when the text should continue the prompt).
    """

    def __init__(self, tokenizer, stop: list[str] | None = None, context: Iterable[int] = ()):
        self.text, self.stopper = TextStream(tokenizer, context), StopText(stop)
        self.stopped = False

    def push(self, token: int) -> tuple[str, bool]:
        out, self.stopped = self.stopper.push(self.text.push(token))
        return out, self.stopped

    def flush(self) -> str:
        """What is still held back, at the end of the row (nothing once a stop sequence was seen)."""
        if self.stopped:
            return ""
        out, self.stopped = self.stopper.push(self.text.flush())
        return out if self.stopped else out + self.stopper.flush()


def collect_text(pieces: Iterable[str], on_text: Callable[[str], None] | None) -> str:
    """Join streamed text increments, handing each to on_text as it comes."""
    out = []
    for piece in pieces:
        out.append(piece)
        if on_text is not None:
            on_text(piece)
    return "".join(out)
