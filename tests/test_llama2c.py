"""llama2.c checkpoints (legacy .bin, version-1 .bin, training .pt) written here from random
weights, converted by us, against transformers' LlamaForCausalLM holding the same weights.

The .bin files are written with numpy following llama2.c's export.py layout (legacy_export and
version1_export); the .pt the way its train.py saves one. Tolerance: max|Δ|/max|ref| <= 1e-4.
"""
import json
import struct

import numpy as np
import pytest
import torch

import llama_np
from conftest import assert_one_line_error, run_cli
from llama_np.checkpoints.convert import convert
from reference import hf_llama, hf_logits, rel_err

TOL = 1e-4
SHAPE = dict(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=90, hidden_dim=100)  # HD 8, GQA 6/2
MAX_SEQ_LEN = 64


def random_weights(seed, dim, n_layers, n_heads, n_kv_heads, vocab_size, hidden_dim, shared):
    """float32 weights with Meta's names; a shared classifier is the embedding itself."""
    rng = np.random.default_rng(seed)
    hd = dim // n_heads

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    def norm():
        return (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)

    weights = {"tok_embeddings.weight": rng.standard_normal((vocab_size, dim)).astype(np.float32),
               "norm.weight": norm()}
    for i in range(n_layers):
        p = f"layers.{i}."
        weights.update({p + "attention_norm.weight": norm(), p + "ffn_norm.weight": norm(),
                        p + "attention.wq.weight": w(n_heads * hd, dim),
                        p + "attention.wk.weight": w(n_kv_heads * hd, dim),
                        p + "attention.wv.weight": w(n_kv_heads * hd, dim),
                        p + "attention.wo.weight": w(dim, n_heads * hd),
                        p + "feed_forward.w1.weight": w(hidden_dim, dim),
                        p + "feed_forward.w2.weight": w(dim, hidden_dim),
                        p + "feed_forward.w3.weight": w(hidden_dim, dim)})
    weights["output.weight"] = weights["tok_embeddings.weight"] if shared else w(vocab_size, dim)
    return weights


def layers(weights, n_layers, name):
    return [weights[f"layers.{i}.{name}.weight"] for i in range(n_layers)]


def write_legacy_bin(path, weights, dim, n_layers, n_heads, n_kv_heads, vocab_size, hidden_dim, shared,
                     max_seq_len=MAX_SEQ_LEN):
    """export.py legacy_export: 7 int32 (vocab negative = separate classifier), then float32 blocks."""
    hd = dim // n_heads
    angles = np.outer(np.arange(max_seq_len), 10000.0 ** (-np.arange(0, hd, 2) / hd))   # (S, HD/2)
    blocks = ([weights["tok_embeddings.weight"]] + layers(weights, n_layers, "attention_norm")
              + [x for name in ("wq", "wk", "wv", "wo") for x in layers(weights, n_layers, "attention." + name)]
              + layers(weights, n_layers, "ffn_norm")
              + [x for name in ("w1", "w2", "w3") for x in layers(weights, n_layers, "feed_forward." + name)]
              + [weights["norm.weight"], np.cos(angles), np.sin(angles)]
              + ([] if shared else [weights["output.weight"]]))
    header = struct.pack("<7i", dim, hidden_dim, n_layers, n_heads, n_kv_heads,
                         vocab_size if shared else -vocab_size, max_seq_len)
    path.write_bytes(header + b"".join(np.asarray(b, "<f4").tobytes() for b in blocks))
    return path


def write_v1_bin(path, weights, dim, n_layers, n_heads, n_kv_heads, vocab_size, hidden_dim, shared,
                 max_seq_len=MAX_SEQ_LEN, version=1):
    """export.py version1_export: magic "ak42", version, 7 int32, shared flag, pad to 256; float32 blocks."""
    header = struct.pack("<Ii7iB", 0x616B3432, version, dim, hidden_dim, n_layers, n_heads, n_kv_heads,
                         vocab_size, max_seq_len, int(shared))
    blocks = (layers(weights, n_layers, "attention_norm") + layers(weights, n_layers, "ffn_norm")
              + [weights["norm.weight"], weights["tok_embeddings.weight"]]
              + [x for name in ("wq", "wk", "wv", "wo") for x in layers(weights, n_layers, "attention." + name)]
              + [x for name in ("w1", "w2", "w3") for x in layers(weights, n_layers, "feed_forward." + name)]
              + ([] if shared else [weights["output.weight"]]))
    path.write_bytes(header.ljust(256, b"\0") + b"".join(np.asarray(b, "<f4").tobytes() for b in blocks))
    return path


def reference(weights, shape=SHAPE):
    return hf_llama({k: torch.from_numpy(v) for k, v in weights.items()}, **shape, max_seq_len=MAX_SEQ_LEN)


def tokens(vocab_size, T=40, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([np.r_[1, rng.integers(3, vocab_size, T - 1)] for _ in range(2)])   # (2, T)


WRITERS = {"legacy": write_legacy_bin, "v1": write_v1_bin}


@pytest.mark.parametrize("shared", [True, False], ids=["shared_classifier", "separate_classifier"])
@pytest.mark.parametrize("version", ["legacy", "v1"])
def test_llama2c_bin_converts_and_matches_transformers(tmp_path, version, shared):
    weights = random_weights(7, **SHAPE, shared=shared)
    src = WRITERS[version](tmp_path / "model.bin", weights, **SHAPE, shared=shared)
    model = llama_np.load(convert(src, tmp_path / "out", progress=False))
    assert model.source["format"] == "llama2c" and model.tokenizer is None
    assert (model.config.hidden_dim, model.config.max_seq_len, model.config.vocab_size) == (100, MAX_SEQ_LEN, 90)
    t = tokens(90)
    assert rel_err(model.forward(t, 0, model.new_cache(2, 40)), hf_logits(reference(weights), t)) < TOL


def llama2c_training_checkpoint(weights, shape):
    """What llama2.c's train.py saves: the compiled model's state dict ("_orig_mod." names, the
    classifier tied to the embedding), its model_args, and an AdamW state after one step."""
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in weights.items() if k != "output.weight"}
    params_list = list(params.values())
    optimizer = torch.optim.AdamW(params_list, lr=1e-3, betas=(0.9, 0.95))
    sum(p.square().sum() for p in params_list).backward()
    optimizer.step()
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(torch.from_numpy(weights[k]))      # the checkpoint holds `weights` exactly
    model = {"_orig_mod." + k: p.data for k, p in params.items()}
    model["_orig_mod.output.weight"] = model["_orig_mod.tok_embeddings.weight"]   # one storage, two names
    model_args = dict(dim=shape["dim"], n_layers=shape["n_layers"], n_heads=shape["n_heads"],
                      n_kv_heads=shape["n_kv_heads"], vocab_size=shape["vocab_size"], multiple_of=32,
                      max_seq_len=MAX_SEQ_LEN, dropout=0.0)
    return {"model": model, "optimizer": optimizer.state_dict(), "model_args": model_args, "iter_num": 1000,
            "best_val_loss": torch.tensor(1.25), "config": {"batch_size": 8, "compile": True, "dtype": "bfloat16"}}


def test_llama2c_training_pt_converts_and_matches_transformers(tmp_path):
    shape = dict(SHAPE, hidden_dim=128)          # llama2.c's rule: 2/3 of 4*48 = 128, a multiple of 32
    weights = random_weights(8, **shape, shared=True)
    torch.save(llama2c_training_checkpoint(weights, shape), tmp_path / "ckpt.pt")
    model = llama_np.load(convert(tmp_path / "ckpt.pt", tmp_path / "out", progress=False))
    assert model.config.hidden_dim == 128 and model.config.max_seq_len == MAX_SEQ_LEN
    t = tokens(90, seed=1)
    assert rel_err(model.forward(t, 0, model.new_cache(2, 40)), hf_logits(reference(weights, shape), t)) < TOL


def test_model_without_tokenizer_runs_on_ids_and_generate_says_text_needs_one(tmp_path):
    weights = random_weights(9, **SHAPE, shared=True)
    src = write_legacy_bin(tmp_path / "model.bin", weights, **SHAPE, shared=True)
    result = run_cli("convert", src, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "out" / "tokenizer.model").exists()
    ids = llama_np.load(tmp_path / "out").generate([1, 5, 9], max_new_tokens=4, temperature=0.0)
    assert len(ids) <= 4 and all(isinstance(i, int) for i in ids)
    result = run_cli("generate", tmp_path / "out", "--prompt", "Once upon a time", "--max-new-tokens", "3")
    assert_one_line_error(result, "tokenizer")


def test_tokenizer_flag_supplies_the_llama2_tokenizer(tmp_path, llama2_tokenizer_path):
    shape = dict(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=32000, hidden_dim=32)
    src = write_v1_bin(tmp_path / "stories.bin", random_weights(10, **shape, shared=True), **shape, shared=True)
    result = run_cli("convert", src, tmp_path / "out", "--tokenizer", llama2_tokenizer_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == llama2_tokenizer_path.read_bytes()
    result = run_cli("generate", tmp_path / "out", "--prompt", "Once upon a time", "--max-new-tokens", "3",
                     "--temperature", "0", "--echo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon a time")


# ---- bad input: one line `error: ...`, exit 2, nothing written --------------------------------



@pytest.mark.parametrize("version", ["legacy", "v1"])
def test_truncated_or_padded_bin_is_one_line_error(tmp_path, version):
    src = WRITERS[version](tmp_path / "model.bin", random_weights(11, **SHAPE, shared=False), **SHAPE, shared=False)
    data = src.read_bytes()
    src.write_bytes(data[:-4])
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "truncated", "header")
    src.write_bytes(data + b"\0" * 8)
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "longer than its header says")
    assert not (tmp_path / "out").exists()


def test_quantized_v2_bin_is_refused(tmp_path):
    src = write_v1_bin(tmp_path / "q80.bin", random_weights(12, **SHAPE, shared=True), **SHAPE, shared=True, version=2)
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "version 2")


def test_pt_that_is_not_a_training_checkpoint_is_refused(tmp_path):
    torch.save({"tok_embeddings.weight": torch.zeros(4, 4)}, tmp_path / "weights.pt")
    assert_one_line_error(run_cli("convert", tmp_path / "weights.pt", tmp_path / "out"), "model_args")


def test_directory_named_as_llama2c_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "params.json").write_text(json.dumps({"dim": 8}))
    assert_one_line_error(run_cli("convert", tmp_path / "src", tmp_path / "out", "--format", "llama2c"),
                          "one file")
