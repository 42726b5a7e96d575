"""Which model the notebooks run on, chosen the same way in every notebook.

    load_model(MODEL_DIR)   MODEL_DIR (the notebook's variable), else the environment variable
                            MODEL_DIR, names a converted model directory (real LLaMA 2 weights
                            included) -- or the word "demo" to force the demo model;
                            else the real trained stories260K from ../shared/models when present;
                            else the demo model (random weights, built in a second, no download).

The notebooks only *use* llama_np; nothing of the model is re-implemented here, except the
marked minimal reader of llama2.c's .bin format below (until the converter has it).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

import llama_np
from llama_np.config import ModelArgs
from llama_np.weights import write_model_dir

HERE = Path(__file__).resolve().parent
SHARED_MODELS = HERE.parent.parent / "shared" / "models"
STORIES260K = SHARED_MODELS / "stories260K" / "stories260K.bin"
LLAMA2_TOKENIZER = SHARED_MODELS / "llama2-tokenizer" / "tokenizer.model"

_TMP = None


def _scratch() -> Path:
    """A temporary directory for models built by this kernel, removed when it exits."""
    global _TMP
    if _TMP is None:
        _TMP = Path(tempfile.mkdtemp(prefix="llama_np-notebook-"))
        atexit.register(shutil.rmtree, _TMP, True)
    return _TMP


def load_model(model_dir=None) -> tuple[llama_np.Llama, str]:
    """(model, one line saying which model it is and why)."""
    choice = model_dir or os.environ.get("MODEL_DIR") or None
    if choice is not None and str(choice) != "demo":
        model = llama_np.load(choice)
        return model, f"model: {choice} (named by MODEL_DIR)"
    if choice is None and STORIES260K.exists():
        model = llama_np.load(convert_stories260k())
        return model, (f"model: stories260K, a real trained tiny LLaMA 2 (from {STORIES260K.parent}); "
                       f"its tokenizer is not available, so we work with token ids")
    from llama_np.demo import build_demo_model

    model = llama_np.load(build_demo_model(_scratch() / "demo"))
    return model, "model: the demo model (RANDOM weights, a tokenizer trained on a paragraph): the machinery, not the meaning"


def convert_stories260k() -> Path:
    """stories260K.bin -> a converted model directory in the scratch space."""
    out = _scratch() / "stories260K"
    if out.exists():
        return out
    from llama_np.checkpoints import convert as conv

    if "llama2c" in getattr(conv, "FORMATS", ()):          # the package's converter, once it reads .bin
        return conv.convert(STORIES260K, out, fmt="llama2c", progress=False)
    args, tensors = read_llama2c_legacy(STORIES260K)
    return write_model_dir(out, args, tensors, {"format": "llama2c", "path": str(STORIES260K)}, progress=False)


# --- minimal reader of llama2.c's legacy .bin (notebook-only stand-in for llama_np.checkpoints.llama2c) ---
def read_llama2c_legacy(path) -> tuple[ModelArgs, list]:
    """llama2.c's legacy export: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
    max_seq_len), then float32 tensors, each layer's stacked: token embedding, attention norms, wq, wk,
    wv, wo, ffn norms, w1, w2, w3, final norm, two RoPE tables (skipped), and the classifier only
    when vocab_size is negative (else it is the embedding). Rotary layout: Meta's interleaved pairs."""
    header = np.fromfile(path, dtype="<i4", count=7)
    dim, hidden, L, H, KVH, vocab, max_seq_len = (int(v) for v in header)
    args = ModelArgs(dim=dim, n_layers=L, n_heads=H, n_kv_heads=KVH, vocab_size=abs(vocab),
                     hidden_dim=hidden, max_seq_len=max_seq_len)
    data = np.memmap(path, dtype="<f4", mode="r", offset=28)
    kv, hd = KVH * dim // H, dim // H
    parts = [("tok_embeddings", (abs(vocab), dim)), ("attention_norm", (L, dim)), ("wq", (L, dim, dim)),
             ("wk", (L, kv, dim)), ("wv", (L, kv, dim)), ("wo", (L, dim, dim)), ("ffn_norm", (L, dim)),
             ("w1", (L, hidden, dim)), ("w2", (L, dim, hidden)), ("w3", (L, hidden, dim)), ("norm", (dim,)),
             ("rope", (2, max_seq_len, hd // 2))] + ([("output", (abs(vocab), dim))] if vocab < 0 else [])
    arrays, at = {}, 0
    for name, shape in parts:
        n = int(np.prod(shape))
        assert at + n <= data.size, f"{path}: file too short for {name} {shape}"
        arrays[name], at = data[at:at + n].reshape(shape), at + n
    assert at == data.size, f"{path}: {data.size - at} unexpected trailing floats"
    return args, _meta_names(arrays, L)


def _meta_names(a: dict, L: int) -> list:
    """The stacked llama2.c arrays under Meta's tensor names, as (name, load) pairs."""
    where = {"attention_norm": "", "ffn_norm": "", "wq": "attention.", "wk": "attention.", "wv": "attention.",
             "wo": "attention.", "w1": "feed_forward.", "w2": "feed_forward.", "w3": "feed_forward."}
    out = [("tok_embeddings.weight", lambda: a["tok_embeddings"]), ("norm.weight", lambda: a["norm"]),
           ("output.weight", lambda: a.get("output", a["tok_embeddings"]))]
    for i in range(L):
        out += [(f"layers.{i}.{where[k]}{k}.weight", (lambda k=k, i=i: a[k][i])) for k in where]
    return out
# --- end of the minimal llama2.c reader ---


def llama2_tokenizer(model=None) -> tuple[llama_np.Tokenizer, str]:
    """Meta's LLaMA 2 tokenizer from ../shared when present, else the model's (or the demo's) tokenizer."""
    if LLAMA2_TOKENIZER.exists():
        return llama_np.Tokenizer(LLAMA2_TOKENIZER), f"tokenizer: Meta's LLaMA 2 tokenizer ({LLAMA2_TOKENIZER})"
    if model is not None and model.tokenizer is not None:
        return model.tokenizer, "tokenizer: the model's own tokenizer.model"
    from llama_np.demo import train_demo_tokenizer

    path = _scratch() / "demo-tokenizer.model"
    train_demo_tokenizer(path)
    return llama_np.Tokenizer(path), "tokenizer: the demo tokenizer (trained on one paragraph; LLaMA 2's is not here)"


def prompt_tokens(model, text: str, n_without_tokenizer: int = 24) -> np.ndarray:
    """(1, T) ids for `text` with BOS; without a tokenizer (stories260K), BOS and tokens the model itself
    samples (seeded) -- a sequence the model finds natural, so what it does with it is typical."""
    if model.tokenizer is not None:
        return np.array([model.tokenizer.encode(text)])
    ids = model.generate([1], max_new_tokens=n_without_tokenizer - 1, temperature=0.8, top_p=0.9, seed=0)
    return np.array([[1] + ids])


def labels(model, ids) -> list[str]:
    """Readable labels of token ids: the pieces when there is a tokenizer, else '#id'."""
    if model.tokenizer is None:
        return [f"#{int(i)}" for i in ids]
    return [model.tokenizer.id_to_piece(int(i)) for i in ids]
