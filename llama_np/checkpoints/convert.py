"""Convert a checkpoint (any supported format) into the one converted model directory format."""
from __future__ import annotations

from pathlib import Path

from ..errors import LlamaNpError
from ..tokenizer import Tokenizer
from ..verify import verify_meta
from ..weights import TOKENIZER_FILE, check_weight_type, read_model_dir, write_model_dir
from . import hf, llama2c, meta

FORMATS = ("auto", "meta", "llama2c", "hf")


def detect_format(src: Path) -> str:
    """Tell the formats apart by their files:
    meta     a directory with params.json and consolidated.NN.pth
    hf       a directory with config.json and model*.safetensors or pytorch_model*.bin
    llama2c  one file: a .bin export (the "ak42" magic or a plausible 7-int header) or a
             torch-saved training checkpoint (a zip)
    """
    if meta.is_meta_dir(src):
        return "meta"
    if hf.is_hf_dir(src):
        return "hf"
    if src.is_file() and (llama2c.is_zip(src) or llama2c.looks_like_bin(src)):
        return "llama2c"
    if not src.exists():
        raise LlamaNpError(f"{src}: not found")
    raise LlamaNpError(f"{src}: cannot tell the checkpoint format (expected a Meta directory with params.json "
                       f"and consolidated.NN.pth, a Hugging Face directory with config.json and "
                       f"model.safetensors, or a llama2.c .bin / .pt file); name it with --format")


def read_checkpoint(src: Path, fmt: str, vocab: int | None, max_seq_len: int | None):
    """-> (ModelArgs, [(name, load)]) for a format already decided."""
    if fmt == "meta":
        if not src.is_dir():
            raise LlamaNpError(f"{src}: a Meta checkpoint is a directory with params.json and consolidated.NN.pth")
        return meta.read_meta(src, vocab, max_seq_len)
    if fmt == "hf":
        if not (src / "config.json").is_file():
            raise LlamaNpError(f"{src}: a Hugging Face checkpoint is a directory with config.json")
        return hf.read_hf(src, max_seq_len)
    return llama2c.read_llama2c(src, max_seq_len)


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
            progress: bool = True, weight_type: str = "float16", verify: bool = True) -> Path:
    """Convert `src` into `out_dir` (config.json, model.safetensors, tokenizer.model), its matrices
    float16 or int8 rows + scales (`weight_type`), one tensor at a time. A Meta download is first
    checked against its checklist.chk when it has one (verify=False skips that)."""
    src, out_dir = Path(src), Path(out_dir)
    if fmt not in FORMATS:
        raise LlamaNpError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_weight_type(weight_type)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LlamaNpError(f"{out_dir}: output directory exists and is not empty")
    fmt = detect_format(src) if fmt == "auto" else fmt
    if verify and fmt == "meta" and (src / "checklist.chk").is_file():
        verify_meta(src, progress)               # a corrupt download is refused before anything is written
    tok_path = find_tokenizer(src, tokenizer)
    tok = Tokenizer(tok_path) if tok_path is not None else None
    vocab = tok.n_words if tok is not None else None
    args, tensors = read_checkpoint(src, fmt, vocab, max_seq_len)
    if tok is not None and tok.n_words != args.vocab_size:
        raise LlamaNpError(f"{tok_path}: tokenizer has {tok.n_words} pieces, the model's vocab_size is "
                           f"{args.vocab_size}; name the model's own tokenizer with --tokenizer")
    source = {"format": fmt, "path": str(src.resolve()),
              "tokenizer": str(tok_path.resolve()) if tok_path else None}
    return write_model_dir(out_dir, args, tensors, source, tok_path, progress, weight_type)


def quantize(model_dir, out_dir, progress: bool = True) -> Path:
    """`llama-np quantize`: an int8 copy of a float16 converted directory, one tensor at a time."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LlamaNpError(f"{out_dir}: output directory exists and is not empty")
    args, weights, config = read_model_dir(model_dir)
    if config.get("weight_type", "float16") != "float16":
        raise LlamaNpError(f"{model_dir}: already {config['weight_type']}; quantize takes a float16 directory")
    tok_path = model_dir / TOKENIZER_FILE
    source = {"format": "llama_np", "path": str(model_dir.resolve()), "quantized_from": config.get("source")}
    tensors = [(name, lambda w=w: w) for name, w in weights.items()]
    return write_model_dir(out_dir, args, tensors, source, tok_path if tok_path.is_file() else None, progress,
                           weight_type="int8")
