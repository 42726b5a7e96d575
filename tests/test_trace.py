"""The inspection hook: `model.forward(..., trace={})` records every intermediate, and each one equals
the matching intermediate of transformers' LlamaForCausalLM (caught with forward hooks on its
submodules and a wrapper around its eager attention function), layer by layer.

Tolerance everywhere: max |ours - ref| / max |ref| <= 1e-4 (both float32 on the same float16 weights).
Hugging Face keeps q and k in its half-split rotary layout (its wq/wk rows are permuted, see
reference.meta_to_hf_permute); we bring ours into that layout with the column permutation
`HALF_SPLIT` before comparing.
"""
import numpy as np
import pytest
import torch

import llama_np
from llama_np.config import ModelArgs
from llama_np.weights import write_model_dir
from reference import hf_llama, random_meta_weights, rel_err

TOL = 1e-4
DIM, N_LAYERS, N_HEADS, N_KV_HEADS, VOCAB, HIDDEN = 64, 3, 8, 2, 97, 176
HD = DIM // N_HEADS
HALF_SPLIT = np.r_[np.arange(0, HD, 2), np.arange(1, HD, 2)]   # Meta pair i (2i, 2i+1) -> HF (i, i + HD/2)
PER_LAYER = ["attention_norm", "q", "k", "v", "q_rot", "k_rot", "scores", "probs", "attention_out", "h",
             "ffn_norm", "ffn_gate", "ffn_up", "ffn_out", "out"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    weights = random_meta_weights(DIM, N_LAYERS, N_HEADS, N_KV_HEADS, VOCAB, HIDDEN, seed=11)
    args = ModelArgs(dim=DIM, n_layers=N_LAYERS, n_heads=N_HEADS, n_kv_heads=N_KV_HEADS, vocab_size=VOCAB,
                     hidden_dim=HIDDEN, max_seq_len=64)
    out = write_model_dir(tmp_path_factory.mktemp("trace") / "model", args,
                          [(n, (lambda t=t: t.float().numpy())) for n, t in weights.items()],
                          {"format": "test"}, progress=False)
    ref = hf_llama(weights, dim=DIM, n_layers=N_LAYERS, n_heads=N_HEADS, n_kv_heads=N_KV_HEADS,
                   vocab_size=VOCAB, hidden_dim=HIDDEN)
    return llama_np.load(out), ref


def hf_intermediates(ref, tokens: np.ndarray, monkeypatch) -> dict:
    """Run transformers' model once and collect, under our trace names, what its submodules saw.

    Layouts are HF's: q/k/v (B, T, heads*HD) from the projections, attention tensors (B, H, T, S)."""
    import transformers.models.llama.modeling_llama as hf

    rec, hooks = {}, []

    def keep(name, take=lambda module, args, output: output):
        def hook(module, args, output):
            rec[name] = take(module, args, output).detach().numpy().copy()
        return hook

    m = ref.model
    hooks.append(m.embed_tokens.register_forward_hook(keep("tok_embeddings")))
    for i, layer in enumerate(m.layers):
        p, att, mlp = f"layers.{i}.", layer.self_attn, layer.mlp
        hooks += [layer.input_layernorm.register_forward_hook(keep(p + "attention_norm")),
                  att.q_proj.register_forward_hook(keep(p + "q")),
                  att.k_proj.register_forward_hook(keep(p + "k")),
                  att.v_proj.register_forward_hook(keep(p + "v")),
                  att.o_proj.register_forward_hook(keep(p + "attention_out")),
                  # the residual stream after attention is what the FFN norm receives
                  layer.post_attention_layernorm.register_forward_hook(keep(p + "h", lambda mod, a, o: a[0])),
                  layer.post_attention_layernorm.register_forward_hook(keep(p + "ffn_norm")),
                  mlp.act_fn.register_forward_hook(keep(p + "ffn_gate")),
                  mlp.up_proj.register_forward_hook(keep(p + "ffn_up")),
                  mlp.down_proj.register_forward_hook(keep(p + "ffn_out")),
                  layer.register_forward_hook(keep(p + "out", lambda mod, a, o: o[0] if isinstance(o, tuple) else o))]
    hooks += [m.norm.register_forward_hook(keep("norm")), ref.lm_head.register_forward_hook(keep("logits"))]

    eager = hf.eager_attention_forward
    calls = []

    def recording_attention(module, query, key, value, attention_mask, scaling, **kwargs):
        p = f"layers.{module.layer_idx}."
        out, probs = eager(module, query, key, value, attention_mask, scaling, **kwargs)
        # the scores by hand from HF's rotated q and k: q . k / sqrt(HD), each query head reading its kv head
        k_shared = key.repeat_interleave(module.num_key_value_groups, dim=1)          # (B, H, S, HD)
        rec[p + "scores"] = (query @ k_shared.transpose(2, 3) * scaling).detach().numpy()
        rec[p + "q_rot"], rec[p + "k_rot"] = query.detach().numpy(), key.detach().numpy()
        rec[p + "probs"] = probs.detach().numpy()
        calls.append(p)
        return out, probs

    monkeypatch.setattr(hf, "eager_attention_forward", recording_attention)
    try:
        with torch.no_grad():
            ref(torch.as_tensor(tokens, dtype=torch.long), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == N_LAYERS, "transformers did not call eager_attention_forward: the hook missed attention"
    return rec


def ours_in_hf_layout(name: str, x: np.ndarray) -> np.ndarray:
    """Our trace tensor in the layout the HF hook recorded (see hf_intermediates)."""
    kind = name.rsplit(".", 1)[-1]
    if kind in ("q", "k", "v"):                      # (B, T, n, HD) -> (B, T, n*HD), q/k half-split
        x = x[..., HALF_SPLIT] if kind != "v" else x
        return x.reshape(*x.shape[:2], -1)
    if kind in ("q_rot", "k_rot"):                   # (B, T, n, HD) -> (B, n, T, HD) half-split
        return x[..., HALF_SPLIT].transpose(0, 2, 1, 3)
    return x


@pytest.fixture(scope="module")
def traced(pair):
    model, _ = pair
    rng = np.random.default_rng(0)
    tokens = np.stack([np.r_[1, rng.integers(3, VOCAB, 23)], np.r_[1, rng.integers(3, VOCAB, 23)]])  # (2, 24)
    trace = {}
    model.forward(tokens, start_pos=0, cache=model.new_cache(2, 24), trace=trace)
    return tokens, trace


def test_trace_records_every_documented_intermediate_of_every_layer(traced):
    _, trace = traced
    expected = {"tok_embeddings", "norm", "logits"} | {f"layers.{i}.{k}" for i in range(N_LAYERS) for k in PER_LAYER}
    assert expected <= set(trace), sorted(expected - set(trace))


@pytest.mark.parametrize("component", PER_LAYER)
def test_traced_component_matches_transformers_in_every_layer(pair, traced, component, monkeypatch):
    _, ref = pair
    tokens, trace = traced
    theirs = hf_intermediates(ref, tokens, monkeypatch)
    for i in range(N_LAYERS):
        name = f"layers.{i}.{component}"
        ours, expected = ours_in_hf_layout(name, trace[name]), theirs[name]
        if component == "scores":                     # compare where the causal mask lets a query see
            T, S = ours.shape[-2:]
            visible = np.arange(S)[None, :] <= np.arange(T)[:, None]                   # (T, S)
            assert np.all(np.isneginf(ours[..., ~visible])), f"{name}: future positions not masked with -inf"
            ours, expected = ours[..., visible], expected[..., visible]
        assert ours.shape == expected.shape, (name, ours.shape, expected.shape)
        assert rel_err(ours, expected) < TOL, f"{name}: relative difference {rel_err(ours, expected):.2e}"


def test_traced_embeddings_final_norm_and_logits_match_transformers(pair, traced, monkeypatch):
    _, ref = pair
    tokens, trace = traced
    theirs = hf_intermediates(ref, tokens, monkeypatch)
    for name in ("tok_embeddings", "norm", "logits"):
        assert rel_err(trace[name], theirs[name]) < TOL, name


def test_trace_of_a_cached_decode_step_matches_the_same_position_of_a_full_pass(pair):
    """Decoding token t through the cache records the same q_rot, k_rot, probs row and output as row t
    of the full pass — the probabilities span all t+1 cached positions."""
    model, _ = pair
    tokens = np.r_[1, np.random.default_rng(1).integers(3, VOCAB, 15)][None]                 # (1, 16)
    full, step = {}, {}
    model.forward(tokens, 0, model.new_cache(1, 16), trace=full)
    cache = model.new_cache(1, 16)
    model.forward(tokens[:, :15], 0, cache)
    model.forward(tokens[:, 15:], 15, cache, trace=step)
    for name in ("layers.1.q_rot", "layers.1.k_rot", "layers.2.out", "logits"):
        assert rel_err(step[name][:, -1], full[name][:, -1]) < TOL, name
    assert step["layers.2.probs"].shape == (1, N_HEADS, 1, 16)
    assert rel_err(step["layers.2.probs"][:, :, -1], full["layers.2.probs"][:, :, -1]) < TOL


def test_forward_without_trace_gives_the_same_logits_as_with_trace(pair, traced):
    model, _ = pair
    tokens, trace = traced
    plain = model.forward(tokens, 0, model.new_cache(2, 24))
    np.testing.assert_array_equal(plain, trace["logits"])
