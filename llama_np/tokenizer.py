"""The SentencePiece tokenizer, as Meta's llama/tokenizer.py wraps it."""
from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from .errors import LlamaNpError


class Tokenizer:
    def __init__(self, model_path):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise LlamaNpError(f"{model_path}: tokenizer model not found")
        self.sp = spm.SentencePieceProcessor()
        try:
            ok = self.sp.Load(str(model_path))
        except (OSError, RuntimeError) as e:
            raise LlamaNpError(f"{model_path}: not a SentencePiece model ({e})".splitlines()[0]) from None
        if not ok:
            raise LlamaNpError(f"{model_path}: not a SentencePiece model")
        self.path = model_path
        self.n_words: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()
        assert self.sp.vocab_size() == self.sp.get_piece_size(), f"{model_path}: inconsistent piece count"

    def encode(self, s: str, bos: bool = True, eos: bool = False) -> list[int]:
        assert isinstance(s, str), f"encode: expected str, got {type(s).__name__}"
        t = self.sp.encode(s)
        if bos:
            t = [self.bos_id] + t
        if eos:
            t = t + [self.eos_id]
        return t

    def decode(self, t) -> str:
        return self.sp.decode([int(i) for i in t])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))
