"""`llama-np demo`: a tiny LLaMA-2-shaped model with random weights, built and run in seconds.

Nothing is downloaded: the tokenizer is trained on a paragraph of text the package carries, the
weights are random numbers written in the converted format, and the model is then loaded and run
exactly as a real converted model would be.
"""
from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm

from .config import ModelArgs, llama_hidden_dim
from .generation import GenerationStats
from .model import load
from .spec import expected_shapes
from .tokenizer import Tokenizer
from .weights import TOKENIZER_FILE, write_model_dir

DEMO_TEXT = Path(__file__).parent / "data" / "demo.txt"


def train_demo_tokenizer(path: Path, vocab_size: int = 320) -> None:
    """Train a small SentencePiece BPE model (byte fallback, like LLaMA's) on the demo text."""
    model = io.BytesIO()
    lines = DEMO_TEXT.read_text(encoding="utf-8").splitlines()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, hard_vocab_limit=False, character_coverage=1.0, bos_id=1, eos_id=2,
        unk_id=0, pad_id=-1, minloglevel=2)
    path.write_bytes(model.getvalue())


def build_demo_model(out_dir, seed: int = 0, progress: bool = False) -> Path:
    """Write a random-weight model (dim 64, 2 layers, GQA 4/2 heads) with a trained tokenizer."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = Path(tmp) / TOKENIZER_FILE
        train_demo_tokenizer(tok_path)
        vocab_size = Tokenizer(tok_path).n_words
        args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab_size,
                         hidden_dim=llama_hidden_dim(64, multiple_of=32, ffn_dim_multiplier=None),
                         max_seq_len=256)
        rng = np.random.default_rng(seed)

        def random_tensor(name, shape):
            if len(shape) == 1:                                    # norm weights: around 1
                return lambda: 1.0 + 0.1 * rng.standard_normal(shape)
            return lambda: rng.standard_normal(shape) / np.sqrt(shape[1])

        tensors = [(n, random_tensor(n, s)) for n, s in expected_shapes(args).items()]
        return write_model_dir(out_dir, args, tensors, {"format": "demo", "random_weights": True, "seed": seed},
                               tok_path, progress)


def run_demo(prompt: str = "Once upon a time", max_new_tokens: int = 40, seed: int = 0) -> None:
    say = lambda s: print(s, file=sys.stderr)
    say("llama-np demo: a tiny LLaMA-2-shaped model with RANDOM weights (nothing was downloaded).")
    say("Its output is gibberish by design; it shows the machinery, not a trained model.")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_demo_model(Path(tmp) / "demo-model", seed=seed)
        model = load(model_dir)
        a = model.config
        say(f"1. trained a {a.vocab_size}-piece SentencePiece tokenizer on the text in {DEMO_TEXT.name}")
        say(f"2. wrote random weights in the converted format: dim={a.dim} n_layers={a.n_layers} "
            f"n_heads={a.n_heads} n_kv_heads={a.n_kv_heads} hidden_dim={a.hidden_dim}")
        say(f"3. loaded it (memory-mapped float16) and prompt {prompt!r} -> ids "
            f"{model.tokenizer.encode(prompt)}")
        say(f"4. generating {max_new_tokens} tokens (temperature 0.8, top-p 0.9, seed {seed}):\n")
        stats = GenerationStats()
        print(prompt, end="", flush=True)
        model.generate(prompt, max_new_tokens=max_new_tokens, temperature=0.8, top_p=0.9, seed=seed,
                       on_text=lambda s: print(s, end="", flush=True), stats=stats)
        print(flush=True)
        say(f"\n[{stats.summary()}]")
    say("\nTo run a real model: convert Meta's LLaMA 2 weights (or karpathy's tinyllamas) once with\n"
        "  llama-np convert path/to/llama-2-7b llama-2-7b-np\n"
        "then generate with\n"
        "  llama-np generate llama-2-7b-np --prompt \"Once upon a time\"\n"
        "(see the README's 'Getting weights').")
