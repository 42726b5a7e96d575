"""Hugging Face LLaMA checkpoints written by transformers itself, converted by us.

References: transformers' LlamaForCausalLM reading the same directory (weights rounded to float16,
float32 compute), and the same weights written in Meta's format by tests/reference.py.
Tolerance: max |ours - ref| / max |ref| <= 1e-4.
"""
import json
import shutil

import numpy as np
import pytest
import torch

import llama_np
from conftest import assert_one_line_error, run_cli
from llama_np.checkpoints.convert import convert
from llama_np.weights import read_safetensors
from reference import hf_from_pretrained_fp16_rounded, hf_logits, hf_state_to_meta, random_hf_llama, rel_err, \
    write_meta_checkpoint

TOL = 1e-4
# intermediate_size 192 follows Meta's rule for dim 64, multiple_of 32: int(2*4*64/3) = 170 -> 192,
# so the same shapes can be written as a Meta checkpoint.
BASE = dict(vocab_size=300, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
            max_position_embeddings=256)
CASES = {
    # GQA 8/2, bf16, one model.safetensors, separate lm_head
    "bf16_gqa_single_file": dict(config=dict(num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5,
                                             rope_theta=10000.0, tie_word_embeddings=False),
                                 dtype=torch.bfloat16, layout="safetensors"),
    # GQA 8/4, fp32, sharded (index + 4-ish shards), tied embeddings, rope_theta 500000
    "fp32_sharded_tied_gqa": dict(config=dict(num_attention_heads=8, num_key_value_heads=4, rms_norm_eps=1e-6,
                                              rope_theta=500000.0, tie_word_embeddings=True),
                                  dtype=torch.float32, layout="sharded"),
    # multi-head, fp16, pytorch_model.bin (torch.save of the state dict, as transformers 4.x wrote it)
    # with an old-style config.json (top-level rope_theta, torch_dtype)
    "fp16_pytorch_model_bin_old_config": dict(config=dict(num_attention_heads=4, num_key_value_heads=4,
                                                          rms_norm_eps=1e-5, rope_theta=20000.0,
                                                          tie_word_embeddings=False),
                                              dtype=torch.float16, layout="bin"),
}


def save_hf(model, path, layout):
    """Write the model the way a Hugging Face repository holds it."""
    if layout == "safetensors":
        model.save_pretrained(path)
    elif layout == "sharded":
        model.save_pretrained(path, max_shard_size="60KB")
        assert (path / "model.safetensors.index.json").exists() and len(list(path.glob("model-*.safetensors"))) > 2
    else:
        model.config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
        config = json.loads((path / "config.json").read_text())
        config["rope_theta"] = config.pop("rope_parameters")["rope_theta"]
        config.pop("dtype", None)
        config["torch_dtype"] = "float16"
        (path / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    spec = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    model = random_hf_llama(seed=len(request.param), **BASE, **spec["config"]).to(spec["dtype"])
    save_hf(model, root / "hf", spec["layout"])
    out = convert(root / "hf", root / "converted", fmt="auto", progress=False)
    return dict(root=root, model=model, ours=llama_np.load(out), name=request.param)


def test_auto_detects_hf_and_reads_its_config(case):
    c, hf = case["ours"].config, case["model"].config
    assert case["ours"].source["format"] == "hf"
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.hidden_dim) == (
        hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads, hf.vocab_size,
        hf.intermediate_size)
    assert (c.norm_eps, c.rope_theta, c.max_seq_len) == (hf.rms_norm_eps, CASES[case["name"]]["config"]["rope_theta"],
                                                         hf.max_position_embeddings)


def test_converted_hf_checkpoint_logits_match_transformers(case):
    ref = hf_from_pretrained_fp16_rounded(case["root"] / "hf")
    rng = np.random.default_rng(0)
    tokens = np.stack([np.r_[1, rng.integers(3, 300, 47)], np.r_[1, rng.integers(3, 300, 47)]])   # (2, 48)
    ours = case["ours"].forward(tokens, 0, case["ours"].new_cache(2, 48))
    assert rel_err(ours, hf_logits(ref, tokens)) < TOL


def test_same_weights_in_meta_format_convert_to_identical_float16(case):
    hf = case["model"].config
    params = {"dim": hf.hidden_size, "n_layers": hf.num_hidden_layers, "n_heads": hf.num_attention_heads,
              "n_kv_heads": hf.num_key_value_heads, "multiple_of": 32, "norm_eps": hf.rms_norm_eps,
              "vocab_size": hf.vocab_size, "rope_theta": CASES[case["name"]]["config"]["rope_theta"]}
    write_meta_checkpoint(case["root"] / "meta", params, hf_state_to_meta(case["model"]), n_shards=2)
    out = convert(case["root"] / "meta", case["root"] / "meta-converted", fmt="auto",
                  max_seq_len=hf.max_position_embeddings, progress=False)
    assert llama_np.load(out).config == case["ours"].config
    from_meta = read_safetensors(out / "model.safetensors")
    from_hf = read_safetensors(case["root"] / "converted" / "model.safetensors")
    assert from_meta.keys() == from_hf.keys()
    for name in from_meta:
        assert from_hf[name].dtype == np.float16
        np.testing.assert_array_equal(from_hf[name].view(np.uint16), from_meta[name].view(np.uint16), err_msg=name)


# ---- bad input: one line `error: ...`, exit 2, nothing written --------------------------------

@pytest.fixture(scope="module")
def small_hf(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "hf"
    random_hf_llama(seed=3, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2).save_pretrained(path, max_shard_size="20KB")
    return path


def edited_copy(src, dst, **config_changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(config_changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst




@pytest.mark.parametrize("changes, words", [
    (dict(model_type="mistral"), ["model_type", "mistral"]),
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}), ["rope scaling"]),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), ["rope scaling"]),
    (dict(attention_bias=True), ["attention_bias"]),
    (dict(head_dim=16), ["head_dim"]),
    (dict(intermediate_size=96), ["mlp.", "config implies"]),  # weights of another model
], ids=["not_llama", "linear_rope", "old_style_dynamic_rope", "attention_bias", "head_dim", "config_mismatch"])
def test_refuses_what_is_not_this_llama(small_hf, tmp_path, changes, words):
    src = edited_copy(small_hf, tmp_path / "bad", **changes)
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), *words)
    assert not (tmp_path / "out").exists()


def test_missing_shard_is_one_line_error(small_hf, tmp_path):
    src = edited_copy(small_hf, tmp_path / "bad")
    next(src.glob("model-*.safetensors")).unlink()
    assert_one_line_error(run_cli("convert", src, tmp_path / "out"), "not found", "index")


def test_truncated_safetensors_is_one_line_error(small_hf, tmp_path):
    src = edited_copy(small_hf, tmp_path / "bad")
    shard = sorted(src.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    assert_one_line_error(run_cli("convert", src, tmp_path / "out", "--format", "hf"), "truncated")
    assert not (tmp_path / "out").exists()


def test_unknown_format_is_one_line_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n" * 10)
    assert_one_line_error(run_cli("convert", tmp_path / "notes.txt", tmp_path / "out"), "cannot tell")
    assert_one_line_error(run_cli("convert", tmp_path / "notes.txt", tmp_path / "out", "--format", "gguf"),
                          "invalid choice")
