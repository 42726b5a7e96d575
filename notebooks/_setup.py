"""Which model the notebooks run on, chosen the same way in every notebook.

    load_model(MODEL_DIR)   (model_directory: the same choice, as a directory)
                            MODEL_DIR (the notebook's variable), else the environment variable
                            MODEL_DIR: a converted model directory (real LLaMA 2 weights included),
                            or the word "stories260K" for the stories260K checkpoint in
                            ../shared/models (a real-format GQA checkpoint with trained-looking
                            weights whose origin is unverified; no tokenizer);
                            else (or "handmade") the hand-written LLaMA of `llama-np demo`, built
                            in a second with nothing downloaded: its previous-token and induction
                            heads make attention maps that mean something (llama_np/handmade.py).

The notebooks only *use* llama_np; nothing of the model is re-implemented here.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

import llama_np

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
    path, about = model_directory(model_dir)
    return llama_np.load(path), about


def model_directory(model_dir=None) -> tuple[Path, str]:
    """(the converted model directory load_model opens, the line saying which model it is and why)."""
    choice = str(model_dir or os.environ.get("MODEL_DIR") or "handmade")
    if choice in ("handmade", "demo"):
        return handmade_model(), ("model: the hand-written LLaMA of `llama-np demo` (weights written by formula, "
                                  "not trained; llama_np/handmade.py): it continues text it has seen earlier in the prompt")
    if choice == "stories260K":
        if not STORIES260K.exists():
            raise FileNotFoundError(f"MODEL_DIR=stories260K needs {STORIES260K}")
        return convert_stories260k(), (
            f"model: stories260K from {STORIES260K.parent}, a real-format GQA checkpoint with trained-looking "
            f"weights whose origin is unverified; its tokenizer is not available, so we work with token ids")
    return Path(choice), f"model: {choice} (named by MODEL_DIR)"


def handmade_model() -> Path:
    """The hand-written model (llama_np/handmade.py with the demo tokenizer), built once in the scratch space."""
    out = _scratch() / "handmade"
    if out.exists():
        return out
    from llama_np.demo import build_handmade_model

    return build_handmade_model(out)


def convert_stories260k() -> Path:
    """stories260K.bin -> a converted model directory in the scratch space."""
    out = _scratch() / "stories260K"
    if out.exists():
        return out
    from llama_np.checkpoints.convert import convert

    return convert(STORIES260K, out, fmt="llama2c", progress=False)


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
