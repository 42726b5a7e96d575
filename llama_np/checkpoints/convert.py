"""Convert a checkpoint (any supported format) into the one converted model directory format."""
from __future__ import annotations

from pathlib import Path

from ..errors import LlamaNpError
from ..weights import write_model_dir
from . import meta

FORMATS = ("auto", "meta")


def detect_format(src: Path) -> str:
    if meta.is_meta_dir(src):
        return "meta"
    if not src.exists():
        raise LlamaNpError(f"{src}: not found")
    raise LlamaNpError(f"{src}: cannot tell the checkpoint format (expected a Meta directory with "
                       f"params.json and consolidated.NN.pth); name it with --format")


def find_tokenizer(src: Path, tokenizer) -> Path | None:
    if tokenizer is not None:
        path = Path(tokenizer)
        if not path.is_file():
            raise LlamaNpError(f"{path}: tokenizer model not found")
        return path
    for candidate in ([src / "tokenizer.model", src.parent / "tokenizer.model"] if src.is_dir()
                      else [src.parent / "tokenizer.model"]):
        if candidate.is_file():
            return candidate
    return None


def convert(src, out_dir, tokenizer=None, fmt: str = "auto", max_seq_len: int | None = None,
            progress: bool = True) -> Path:
    """Convert `src` into `out_dir` (config.json, model.safetensors float16, tokenizer.model)."""
    from ..tokenizer import Tokenizer

    src, out_dir = Path(src), Path(out_dir)
    if fmt not in FORMATS:
        raise LlamaNpError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LlamaNpError(f"{out_dir}: output directory exists and is not empty")
    fmt = detect_format(src) if fmt == "auto" else fmt
    tok_path = find_tokenizer(src, tokenizer)
    tok = Tokenizer(tok_path) if tok_path is not None else None
    vocab = tok.n_words if tok is not None else None
    if fmt == "meta":
        if not src.is_dir():
            raise LlamaNpError(f"{src}: a Meta checkpoint is a directory with params.json and consolidated.NN.pth")
        args, tensors = meta.read_meta(src, vocab, max_seq_len)
    if tok is not None and tok.n_words != args.vocab_size:
        raise LlamaNpError(f"{tok_path}: tokenizer has {tok.n_words} pieces, the model's vocab_size is {args.vocab_size}")
    source = {"format": fmt, "path": str(src.resolve()),
              "tokenizer": str(tok_path.resolve()) if tok_path else None}
    return write_model_dir(out_dir, args, tensors, source, tok_path, progress)
