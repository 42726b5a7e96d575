"""`llama-np demo`: a LLaMA 2 written by hand continues a passage it has seen once, in about a second.

Nothing is downloaded: the tokenizer is trained on a page of text the package carries, the weights
are written by formula (handmade.py derives every one), and the model is written in the converted
format, loaded and run exactly as a converted Meta model would be.

`build_demo_model` writes a model of the same kind of shape with random weights: the tests use it
where any LLaMA will do.
"""
from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm

from .config import ModelArgs, llama_hidden_dim
from .errors import LlamaNpError
from .generation import GenerationStats, check_prompts
from .handmade import write_handmade_model
from .model import load
from .spec import expected_shapes
from .tokenizer import Tokenizer
from .weights import TOKENIZER_FILE, write_model_dir

DEMO_TEXT = Path(__file__).parent / "data" / "demo.txt"
EXAMPLE_PASSAGE = "The cat sat on the mat and looked at the little robot."
EXAMPLE_REPEAT = "The cat sat on the"         # the passage's first words again: the model goes on from here
NEW_TOKENS_FOR_OWN_PROMPT = 40
HOW = ("How it does it: layer 0's four previous-token heads copy the four tokens before each position into it; "
       "layer 1's induction head finds where the last four tokens occurred before and copies the token that followed.")


def train_demo_tokenizer(path: Path, vocab_size: int = 320) -> None:
    """Train a small SentencePiece BPE model (byte fallback, like LLaMA's) on the demo text."""
    model = io.BytesIO()
    lines = DEMO_TEXT.read_text(encoding="utf-8").splitlines()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, hard_vocab_limit=False, character_coverage=1.0, bos_id=1, eos_id=2,
        unk_id=0, pad_id=-1, minloglevel=2)
    path.write_bytes(model.getvalue())


def build_handmade_model(out_dir, progress: bool = False) -> Path:
    """Write the hand-written model (handmade.py) with the demo tokenizer, as a converted model directory."""
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = Path(tmp) / TOKENIZER_FILE
        train_demo_tokenizer(tok_path)
        return write_handmade_model(out_dir, tok_path, progress)


def build_demo_model(out_dir, seed: int = 0, progress: bool = False) -> Path:
    """Write a random-weight model (dim 64, 2 layers, GQA 4/2 heads) with the demo tokenizer: for tests."""
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


def example() -> tuple[str, str]:
    """(the demo's prompt, the continuation that completes its repetition)."""
    return f"{EXAMPLE_PASSAGE} {EXAMPLE_REPEAT}", EXAMPLE_PASSAGE[len(EXAMPLE_REPEAT):]


def new_tokens_to_complete(tokenizer, prompt: str, continuation: str) -> int:
    """How many tokens the continuation takes after the prompt (it starts with a space: a word
    boundary, where SentencePiece's pieces never straddle)."""
    return len(tokenizer.encode(prompt + continuation)) - len(tokenizer.encode(prompt))


def describe(args: ModelArgs) -> str:
    """One line on the model the demo runs."""
    return (f"model: dim {args.dim}, {args.n_layers} layers, {args.n_heads} query heads on {args.n_kv_heads} "
            f"key/value heads, head_dim {args.head_dim}, rope_theta 2^{round(np.log2(args.rope_theta))}, a "
            f"{args.vocab_size}-piece tokenizer trained on {DEMO_TEXT.name}; every weight is derived in "
            f"llama_np/handmade.py")


REAL_MODEL_HINT = """
To run a real model: convert Meta's LLaMA 2 weights (or karpathy's tinyllamas) once with
  llama-np convert path/to/llama-2-7b llama-2-7b-np
then generate with
  llama-np generate llama-2-7b-np --prompt "Once upon a time"
(see the README's 'Getting weights')."""


def run_demo(prompt: str | None = None, max_new_tokens: int | None = None) -> None:
    """Build the hand-written model, then continue `prompt` (default: the example) greedily, streaming it."""
    if prompt is not None and not prompt.strip():
        raise LlamaNpError("--prompt is empty: give the model some text to continue")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise LlamaNpError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    say = lambda s: print(s, file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        model = load(build_handmade_model(Path(tmp) / "handmade"))
        text, expected = (prompt, None) if prompt is not None else example()
        ids = model.tokenizer.encode(text)
        check_prompts(model, [ids])                              # too long: refused before anything is printed
        if max_new_tokens is None:
            max_new_tokens = (NEW_TOKENS_FOR_OWN_PROMPT if expected is None
                              else new_tokens_to_complete(model.tokenizer, text, expected))
        say("llama-np demo: a LLaMA 2 whose weights were written by hand, not trained (nothing was downloaded).")
        say(describe(model.config))
        say(f"prompt ({len(ids)} tokens{', a passage and then its first words again' if expected else ''}), "
            f"then up to {max_new_tokens} tokens of greedy continuation:\n")
        stats = GenerationStats()
        print(text, end="", flush=True)
        model.generate(text, max_new_tokens=max_new_tokens, temperature=0.0, stats=stats,
                       on_text=lambda s: print(s, end="", flush=True))
        print(flush=True)
        if stats.new_tokens < min(max_new_tokens, model.config.max_seq_len - len(ids)):
            say("[end of text: nothing earlier in the prompt matched, so the model had nothing to copy]")
        say(f"\n{HOW}\n[{stats.summary()}]")
    say(REAL_MODEL_HINT)
