"""The weight-precision policy: exact float16 widening, and the fused float16 path against transformers.

References: NumPy's own float16 -> float32 cast (a different algorithm: per-element conversion),
and transformers' logits for the same converted weights.
"""
from pathlib import Path

import numpy as np
import pytest

import llama_np
from llama_np.errors import LlamaNpError
from llama_np.kernels import f16_to_f32, linear_f16, to_float32
from llama_np.precision import want_fp32
from test_meta_vs_pytorch import GQA_HIDDEN, GQA_PARAMS, TOL, build, two_prompts
from reference import hf_logits, rel_err


def test_integer_widening_equals_numpy_cast_bit_for_bit_on_every_finite_float16():
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = every[np.isfinite(every)]                        # 63488 values: +-0, subnormals, normals
    got = f16_to_f32(finite, np.empty(finite.shape, np.float32))
    np.testing.assert_array_equal(got.view(np.uint32), finite.astype(np.float32).view(np.uint32))


def test_blocked_float16_product_equals_float32_product_of_the_cast_matrix():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((1000, 300)) * 0.05).astype(np.float16)    # 873-row blocks, uneven split
    for n_rows in (5, 20):                                              # the decode path, the prompt path
        x = rng.standard_normal((n_rows, 300)).astype(np.float32)
        expected = x.astype(np.float64) @ w.astype(np.float64).T
        got = linear_f16(x, w)
        assert got.shape == (n_rows, 1000) and got.dtype == np.float32
        assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) < 1e-6
    np.testing.assert_array_equal(to_float32(w), w.astype(np.float32))


def test_fp32_policy_auto_follows_the_memory_budget_and_rejects_nonsense(monkeypatch):
    weights = {"layers.0.attention.wq.weight": np.zeros((1024, 1024), np.float16)}   # 4 MiB as float32
    monkeypatch.setattr("llama_np.precision.mem_available", lambda: 16 << 20)
    assert want_fp32(weights, "auto")
    monkeypatch.setattr("llama_np.precision.mem_available", lambda: 4 << 20)
    assert not want_fp32(weights, "auto") and want_fp32(weights, "on") and not want_fp32(weights, "off")
    with pytest.raises(LlamaNpError):
        want_fp32(weights, "maybe")


@pytest.fixture(scope="module")
def gqa_dir(tmp_path_factory):
    model, ref = build(tmp_path_factory, GQA_PARAMS, GQA_HIDDEN, n_shards=2, seed=1)
    return model, ref


def test_fused_float16_weights_give_transformers_logits_through_prefill_and_decode(gqa_dir):
    model_auto, ref = gqa_dir
    path = Path(model_auto.source["path"]).parent / "converted"          # where build() converted it
    model = llama_np.load(path, fp32="off")
    assert model.weights["layers.0.attention.wq.weight"].dtype == np.float16
    assert llama_np.load(path, fp32="on").weights["layers.0.attention.wq.weight"].dtype == np.float32
    tokens = two_prompts(model.config.vocab_size, T=24, seed=4)
    cache = model.new_cache(2, 24)
    got = [model.forward(tokens[:, :16], 0, cache)] + [model.forward(tokens[:, p:p + 1], p, cache)
                                                       for p in range(16, 24)]
    assert rel_err(np.concatenate(got, axis=1), hf_logits(ref, tokens)) < TOL
