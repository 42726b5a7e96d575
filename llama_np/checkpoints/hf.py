"""Hugging Face LLaMA checkpoints: config.json + model.safetensors (or shards with
model.safetensors.index.json, or pytorch_model*.bin), as `save_pretrained` writes them.

Two things differ from Meta's checkpoint besides the names:

* HF's config.json names the shape (hidden_size, intermediate_size, num_key_value_heads, ...).
* HF's rotary embedding rotates the two HALVES of each head (`rotate_half`), Meta's rotates
  interleaved neighbours (x0, x1), (x2, x3), ... So transformers' conversion script permuted the
  rows of q_proj and k_proj inside every head: Meta's row 2i+j (pair i, member j) became HF's row
  j*HD/2 + i. We undo that, per head -- q_proj with n_heads, k_proj with n_kv_heads (under GQA
  k_proj has only n_kv_heads heads; permuting it with n_heads scrambles it).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..config import DEFAULT_MAX_SEQ_LEN, ModelArgs, foreign_values, read_json
from ..errors import LlamaNpError
from ..pages import drop_pages
from ..spec import expected_shapes
from ..weights import read_safetensors
from .pth import LazyTensor, bf16_to_float32, load_pth_state_dict

# HF name -> Meta name; "{i}" is the layer index.
HF_TO_META = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attention_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.attention.wq.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.attention.wk.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.attention.wv.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.attention.wo.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.feed_forward.w1.weight",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.feed_forward.w2.weight",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.feed_forward.w3.weight",
}
IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # older files saved it
DTYPES = {None, "float32", "float16", "bfloat16"}
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def is_hf_dir(path: Path) -> bool:
    return (path.is_dir() and (path / "config.json").is_file()
            and (any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin"))))


def meta_name(hf_name: str) -> str | None:
    """"model.layers.3.mlp.gate_proj.weight" -> "layers.3.feed_forward.w1.weight"; None if unknown."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
    if m is None:
        return HF_TO_META.get(hf_name)
    meta = HF_TO_META.get("model.layers.{i}." + m.group(2))
    return meta.format(i=int(m.group(1))) if meta is not None else None


def hf_name(meta: str) -> str:
    """The inverse of meta_name, for error messages:
    "layers.3.feed_forward.w1.weight" -> "model.layers.3.mlp.gate_proj.weight"."""
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", meta)
    key = "layers.{i}." + m.group(2) if m else meta
    hf = {v: k for k, v in HF_TO_META.items()}.get(key, meta)
    return hf.format(i=int(m.group(1))) if m else hf


def hf_to_meta_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo HF's rotary row permutation of q_proj / k_proj.  (n_heads*HD, D) -> (n_heads*HD, D)

    Within a head HF keeps pair i's two members at rows (i, i + HD/2); Meta at (2i, 2i+1).
    """
    rows, D = w.shape
    HD = rows // n_heads
    assert rows == n_heads * HD and HD % 2 == 0, f"hf_to_meta_rows: {w.shape} is not {n_heads} heads of even size"
    return w.reshape(n_heads, 2, HD // 2, D).swapaxes(1, 2).reshape(rows, D)  # (H, HD/2, 2, D) -> rows


def _refuse_unless_llama(path: Path, c: dict) -> None:
    """Refuse, with a reason, a config.json whose model our LLaMA forward pass would compute wrongly."""
    if c.get("model_type") != "llama":
        raise LlamaNpError(f"{path}: model_type is {c.get('model_type')!r}, not 'llama'; "
                           f"llama_np runs LLaMA models only")
    for flag in ("attention_bias", "mlp_bias"):
        if c.get(flag):
            raise LlamaNpError(f"{path}: {flag} is true; LLaMA has no biases and llama_np does not implement them")
    if c.get("hidden_act", "silu") != "silu":
        raise LlamaNpError(f"{path}: hidden_act {c['hidden_act']!r} is not LLaMA's silu (SwiGLU)")
    dtype = c.get("dtype", c.get("torch_dtype"))
    if dtype not in DTYPES or c.get("quantization_config"):
        raise LlamaNpError(f"{path}: dtype {dtype!r}"
                           + (" with a quantization_config" if c.get("quantization_config") else "")
                           + " is not supported (float32, float16 or bfloat16 weights only)")
    for rope in (c.get("rope_parameters"), c.get("rope_scaling")):
        rope_type = (rope or {}).get("rope_type", (rope or {}).get("type", "default"))
        if rope is not None and (not isinstance(rope, dict) or rope_type != "default"):
            raise LlamaNpError(f"{path}: rope scaling {rope!r:.120} is not implemented "
                               f"(llama_np computes LLaMA 2's plain rotary embedding only)")


def _rope_theta(c: dict) -> float:
    """transformers 5.x writes rope_parameters: {"rope_theta": ..., "rope_type": "default"};
    older config.json files have a top-level rope_theta (and no key at all before 4.3x: 10000)."""
    return (c.get("rope_parameters") or {}).get("rope_theta", c.get("rope_theta", 10000.0))


def args_from_config(path: Path, max_seq_len: int | None = None) -> ModelArgs:
    """HF's config.json -> ModelArgs (refusing what is not a plain LLaMA)."""
    c = read_json(path)
    _refuse_unless_llama(path, c)
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in keys if k not in c]
    if missing:
        raise LlamaNpError(f"{path}: missing keys {missing}")
    dim, n_heads = c["hidden_size"], c["num_attention_heads"]
    if c.get("head_dim") not in (None, dim // n_heads) or dim % n_heads:
        raise LlamaNpError(f"{path}: head_dim {c.get('head_dim')} is not hidden_size / num_attention_heads "
                           f"= {dim} / {n_heads}; llama_np needs head_dim = dim / n_heads as in LLaMA 2")
    return ModelArgs(dim=dim, n_layers=c["num_hidden_layers"], n_heads=n_heads,
                     n_kv_heads=c.get("num_key_value_heads") or n_heads, vocab_size=c["vocab_size"],
                     hidden_dim=c["intermediate_size"], norm_eps=c.get("rms_norm_eps", 1e-6),
                     rope_theta=_rope_theta(c),
                     max_seq_len=max_seq_len or c.get("max_position_embeddings") or DEFAULT_MAX_SEQ_LEN)


def weight_files(src: Path) -> list[Path]:
    """The files holding the weights: those an index names, else model*.safetensors, else pytorch_model*.bin."""
    for index_name in WEIGHT_INDEXES:
        if (src / index_name).is_file():
            weight_map = read_json(src / index_name).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise LlamaNpError(f"{src / index_name}: no weight_map")
            files = [src / name for name in sorted(set(weight_map.values()))]
            for f in files:
                if not f.is_file():
                    raise LlamaNpError(f"{f}: not found (listed in {index_name})")
            return files
    files = sorted(src.glob("model*.safetensors")) or sorted(src.glob("pytorch_model*.bin"))
    if not files:
        raise LlamaNpError(f"{src}: no model.safetensors or pytorch_model.bin beside config.json")
    return files


def _open(path: Path) -> dict:
    """name -> array (safetensors, memory-mapped) or LazyTensor (.bin, torch-free) of one file."""
    return read_safetensors(path) if path.suffix == ".safetensors" else load_pth_state_dict(path)


def _as_float(x) -> np.ndarray:
    """A stored tensor as a float array: read_safetensors gives BF16 as its uint16 bits (it has no
    other uint16 dtype), a LazyTensor widens bfloat16 itself."""
    if isinstance(x, LazyTensor):
        return x.numpy()
    if not isinstance(x, np.ndarray):
        raise LlamaNpError(f"expected a tensor, got {type(x).__name__}")
    if x.dtype != np.uint16:
        return x
    values = bf16_to_float32(x)
    drop_pages(x)                                   # the widened copy is all we need now
    return values


def hf_tensors(src: Path) -> dict:
    """HF name -> stored tensor, over all weight files (each name must appear once)."""
    stored, where = {}, {}
    for path in weight_files(src):
        for name, tensor in _open(path).items():
            if name in stored:
                raise LlamaNpError(f"{path}: tensor {name!r} is also in {where[name].name}")
            stored[name], where[name] = tensor, path
    return stored


def read_hf(src: Path, max_seq_len: int | None = None):
    """-> (ModelArgs, [(Meta name, load)]); load() reads one tensor and undoes the rotary permutation."""
    with foreign_values(src / "config.json"):
        args = args_from_config(src / "config.json", max_seq_len)
    stored = hf_tensors(src)
    renamed = {}
    for name, tensor in stored.items():
        if IGNORED.fullmatch(name):
            continue
        meta = meta_name(name)
        if meta is None:
            raise LlamaNpError(f"{src}: unexpected tensor {name!r} (not part of a LlamaForCausalLM)")
        renamed[meta] = tensor
    if "output.weight" not in renamed and "tok_embeddings.weight" in renamed:
        tied = read_json(src / "config.json").get("tie_word_embeddings", False)
        if tied:  # save_pretrained writes a tied lm_head once, as the embedding
            renamed["output.weight"] = renamed["tok_embeddings.weight"]
    check_shapes(src, args, {meta: tuple(t.shape) for meta, t in renamed.items()}, hf_name)
    return args, [(meta, _loader(meta, tensor, args)) for meta, tensor in renamed.items()]


def check_shapes(src: Path, args: ModelArgs, found: dict[str, tuple], source_name=lambda name: name) -> None:
    """Before anything is converted: every tensor present, with the shape the config implies.
    `found` is keyed by Meta names; errors name tensors as the checkpoint does (source_name)."""
    shapes = expected_shapes(args)
    for name, shape in shapes.items():
        if name not in found:
            raise LlamaNpError(f"{src}: tensor {source_name(name)!r} is missing from the checkpoint")
        if found[name] != shape:
            raise LlamaNpError(f"{src}: tensor {source_name(name)!r} has shape {found[name]}, but the config "
                               f"implies {shape} (weights and config do not belong together)")
    extra = sorted(set(found) - set(shapes))
    if extra:
        raise LlamaNpError(f"{src}: unexpected tensor {source_name(extra[0])!r} for a {args.n_layers}-layer model")


def _loader(meta: str, tensor, args: ModelArgs):
    """load() for one tensor (shapes were checked already): q and k get their rows un-permuted."""
    heads = {"attention.wq.weight": args.n_heads, "attention.wk.weight": args.n_kv_heads}.get(
        re.sub(r"^layers\.\d+\.", "", meta))
    if heads is None:
        return lambda: _as_float(tensor)
    def load():
        stored = _as_float(tensor)
        rows = hf_to_meta_rows(stored, heads)       # a copy: the stored pages are done with
        drop_pages(stored)
        return rows
    return load
