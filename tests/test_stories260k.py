"""stories260K from ../shared: a real-format GQA checkpoint (llama2.c legacy .bin, GQA 8/4, vocab 512) with
trained-looking weights whose origin is unverified: it proves arithmetic, not text quality.

The reference reads the file on its own, by the layout in ../shared/models/README.md, and runs
transformers' LlamaForCausalLM on those weights (q/k permuted into HF's rotary layout).
Its tokenizer is not available: everything here works on token ids (BOS = 1, EOS = 2).
"""
import numpy as np
import pytest
import torch

import llama_np
from llama_np.checkpoints.convert import convert
from reference import hf_llama, hf_logits, rel_err

TOL = 1e-4
README_SHAPE = dict(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512)
BOS, EOS = 1, 2


def weights_by_hand(path) -> dict[str, np.ndarray]:
    """The README's layout: 7 int32, then float32 embedding, each per-layer group for all 5 layers,
    final norm, two RoPE tables (512, 4) to skip; the classifier is the embedding (vocab > 0)."""
    header = np.fromfile(path, dtype="<i4", count=7)
    assert header.tolist() == [64, 172, 5, 8, 4, 512, 512], header
    floats = np.fromfile(path, dtype="<f4", offset=28)
    groups = [("tok_embeddings", (512, 64), False), ("attention_norm", (64,), True),
              ("attention.wq", (64, 64), True), ("attention.wk", (32, 64), True), ("attention.wv", (32, 64), True),
              ("attention.wo", (64, 64), True), ("ffn_norm", (64,), True), ("feed_forward.w1", (172, 64), True),
              ("feed_forward.w2", (64, 172), True), ("feed_forward.w3", (172, 64), True), ("norm", (64,), False)]
    weights, at = {}, 0
    for name, shape, per_layer in groups:
        for i in range(5 if per_layer else 1):
            n = int(np.prod(shape))
            weights[f"layers.{i}.{name}.weight" if per_layer else f"{name}.weight"] = floats[at:at + n].reshape(shape)
            at += n
    assert at + 2 * 512 * 4 == floats.size, "the file holds exactly the tensors, then two (512, 4) RoPE tables"
    weights["output.weight"] = weights["tok_embeddings.weight"]
    return weights


@pytest.fixture
def stories(stories260k_path, tmp_path):
    """(our converted model, transformers' model on the same weights)."""
    model = llama_np.load(convert(stories260k_path, tmp_path / "stories260K", progress=False))
    weights = {k: torch.from_numpy(v.copy()) for k, v in weights_by_hand(stories260k_path).items()}
    ref = hf_llama(weights, **README_SHAPE, max_seq_len=512)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # a 64-wide model: threads only contend on the shared test machine
    yield model, ref
    torch.set_num_threads(threads)


def token_ids(T, seed=0):
    rng = np.random.default_rng(seed)
    return np.r_[BOS, rng.integers(3, 512, T - 1)][None]        # (1, T)


def test_stories260k_converts_with_the_readme_config(stories):
    model, _ = stories
    c = model.config
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len) == (
        64, 172, 5, 8, 4, 512, 512)
    assert (c.norm_eps, c.rope_theta) == (1e-5, 10000.0)
    assert model.tokenizer is None
    np.testing.assert_array_equal(model.weights["output.weight"], model.weights["tok_embeddings.weight"])


def test_stories260k_logits_match_transformers(stories):
    model, ref = stories
    tokens = token_ids(200)
    assert rel_err(model.forward(tokens), hf_logits(ref, tokens)) < TOL


def test_cached_decoding_equals_full_recomputation_over_256_positions(stories):
    model, ref = stories
    tokens = token_ids(256, seed=1)
    full = model.forward(tokens)                                  # (1, 256, 512), no cache
    cache = model.new_cache(batch_size=1, max_seq_len=256)
    one_by_one = np.concatenate([model.forward(tokens[:, p:p + 1], p, cache) for p in range(256)], axis=1)
    assert rel_err(one_by_one, full) < 1e-5
    assert rel_err(one_by_one, hf_logits(ref, tokens)) < TOL


def greedy_by_recomputation(model, prompt, max_new_tokens):
    """Each step runs the whole sequence from scratch (no cache) and takes the argmax."""
    ids = list(prompt)
    while len(ids) < len(prompt) + max_new_tokens:
        token = int(np.argmax(model.forward(np.array([ids]))[0, -1]))
        if token == EOS:
            break
        ids.append(token)
    return ids[len(prompt):]


def test_greedy_from_bos_gives_the_same_ids_through_the_cache_as_by_recomputation(stories):
    model, ref = stories
    cached = model.generate([BOS], max_new_tokens=64, temperature=0.0)
    assert len(cached) > 20
    assert cached == greedy_by_recomputation(model, [BOS], 64)
    with torch.no_grad():
        hf = ref.generate(torch.tensor([[BOS]]), max_new_tokens=64, do_sample=False, eos_token_id=EOS,
                          pad_token_id=EOS)[0, 1:].tolist()
    assert cached == (hf[:-1] if hf[-1] == EOS else hf)


def test_greedy_after_a_prefilled_prompt_matches_recomputation(stories):
    """The prompt goes through the cache in one prefill call, then one token per call."""
    model, _ = stories
    prompt = token_ids(9, seed=2)[0].tolist()
    cached = model.generate(prompt, max_new_tokens=40, temperature=0.0)
    assert cached == greedy_by_recomputation(model, prompt, 40)
