"""Convert a checkpoint (any supported format) into the one converted model directory format."""
from __future__ import annotations

from pathlib import Path

from ..errors import LlamaNpError
from ..parallel.ranks import split_model_dir, write_meta_shards, write_split
from ..tokenizer import Tokenizer
from ..verify import verify_meta
from ..weights import TOKENIZER_FILE, check_weight_type, is_model_dir, read_model_dir, write_model_dir
from . import hf, llama2c, meta

FORMATS = ("auto", "meta", "llama2c", "hf", "llama_np")


def detect_format(src: Path) -> str:
    """Tell the formats apart by their files:
    meta     a directory with params.json and consolidated.NN.pth
    hf       a directory with config.json and model*.safetensors or pytorch_model*.bin
    llama2c  one file: a .bin export (the "ak42" magic or a plausible 7-int header) or a
             torch-saved training checkpoint (a zip)
    llama_np a directory we converted (config.json with our ModelArgs, model.safetensors): only
             to be split into tensor-parallel ranks
    """
    if meta.is_meta_dir(src):
        return "meta"
    if is_model_dir(src):
        return "llama_np"
    if hf.is_hf_dir(src):
        return "hf"
    if src.is_file() and (llama2c.is_zip(src) or llama2c.looks_like_bin(src)):
        return "llama2c"
    if not src.exists():
        raise LlamaNpError(f"{src}: not found")
    if src.is_dir() and any(src.glob("rank-*-of-*")):
        raise LlamaNpError(f"{src}: already split into tensor-parallel ranks (run it with --tensor-parallel N)")
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
            progress: bool = True, weight_type: str = "float16", verify: bool = True,
            tensor_parallel: int | None = None) -> Path:
    """Convert `src` into `out_dir` (config.json, model.safetensors, tokenizer.model), its matrices
    float16 or int8 rows + scales (`weight_type`), one tensor at a time; or with tensor_parallel=N
    into N rank directories out_dir/rank-KK-of-NN (parallel/ranks.py). A Meta download is first
    checked against its checklist.chk when it has one (verify=False skips that)."""
    src, out_dir = Path(src), Path(out_dir)
    if fmt not in FORMATS:
        raise LlamaNpError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_weight_type(weight_type)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LlamaNpError(f"{out_dir}: output directory exists and is not empty")
    fmt = detect_format(src) if fmt == "auto" else fmt
    if fmt == "llama_np":
        if tensor_parallel is None:
            raise LlamaNpError(f"{src}: already a converted llama_np directory (add --tensor-parallel N to split "
                               f"it into ranks, or use `llama-np quantize` for int8)")
        if max_seq_len is not None or tokenizer is not None or weight_type != "float16":
            raise LlamaNpError("splitting a converted directory keeps its config, weights and tokenizer: drop "
                               "--max-seq-len, --tokenizer and --dtype (quantize first, then split)")
        return split_model_dir(src, out_dir, tensor_parallel, progress)
    if tensor_parallel is not None and weight_type != "float16":
        raise LlamaNpError("--dtype int8 with --tensor-parallel: convert to int8 first, then split that directory "
                           "with `llama-np convert INT8_DIR OUT_DIR --tensor-parallel N`")
    if verify and fmt == "meta" and (src / "checklist.chk").is_file():
        verify_meta(src, progress)               # a corrupt download is refused before anything is written
    tok_path = find_tokenizer(src, tokenizer)
    tok = Tokenizer(tok_path) if tok_path is not None else None
    vocab = tok.n_words if tok is not None else None
    source = {"format": fmt, "path": str(src.resolve()),
              "tokenizer": str(tok_path.resolve()) if tok_path else None}
    if fmt == "meta" and tensor_parallel is not None and len(meta.shard_files(src)) == tensor_parallel:
        args, shards = meta.read_meta_shards(src, vocab, max_seq_len)      # shard k is rank k: no merge
        check_vocab(tok_path, tok, args)
        return write_meta_shards(out_dir, args, shards, source, [p.name for p in meta.shard_files(src)],
                                 tok_path, progress)
    args, tensors = read_checkpoint(src, fmt, vocab, max_seq_len)
    check_vocab(tok_path, tok, args)
    if tensor_parallel is None:
        return write_model_dir(out_dir, args, tensors, source, tok_path, progress, weight_type)
    return write_split(out_dir, tensor_parallel, args, tensors, source, tok_path, progress)


def check_vocab(tok_path, tok, args) -> None:
    if tok is not None and tok.n_words != args.vocab_size:
        raise LlamaNpError(f"{tok_path}: tokenizer has {tok.n_words} pieces, the model's vocab_size is "
                           f"{args.vocab_size}; name the model's own tokenizer with --tokenizer")



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
