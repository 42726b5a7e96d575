"""Random-weight checkpoints in Meta's on-disk format, converted by us, against transformers' logits.

Tolerance everywhere: max |ours - ref| / max |ref| <= 1e-4 (both sides float32 on the same
float16-rounded weights).
"""
import io
import json

import numpy as np
import pytest
import sentencepiece as spm
import torch

import llama_np
from llama_np.checkpoints.convert import convert
from reference import hf_llama, hf_logits, meta_to_hf_permute, random_meta_weights, rel_err, write_meta_checkpoint

TOL = 1e-4

# 1) two shards, GQA 8/2, ffn_dim_multiplier; vocab_size -1 = the tokenizer's, as Meta writes it.
#    hidden_dim by hand: int(2*4*128/3) = 341; int(1.3*341) = 443; rounded up to 64 -> 448.
GQA_PARAMS = {"dim": 128, "multiple_of": 64, "ffn_dim_multiplier": 1.3, "n_heads": 8, "n_kv_heads": 2,
              "n_layers": 3, "norm_eps": 1e-05, "vocab_size": -1}
GQA_HIDDEN = 448
# 2) one shard, plain multi-head, rope_theta 500000 (Llama 3 style), explicit vocab size.
#    hidden_dim by hand: int(2*4*96/3) = 256, already a multiple of 32.
THETA_PARAMS = {"dim": 96, "multiple_of": 32, "n_heads": 6, "n_layers": 2, "norm_eps": 1e-06,
                "vocab_size": 300, "rope_theta": 500000.0}
THETA_HIDDEN = 256

TEXT = ["The quick brown fox jumps over the lazy dog.", "Translate English to French: cheese => fromage",
        "sea otter => loutre de mer; peppermint => menthe poivrée; plush giraffe => girafe en peluche",
        "Once upon a time there was a little robot who lived by the sea."]


def train_tokenizer(path, vocab_size=340):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT * 3), model_writer=model, vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, hard_vocab_limit=False,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    path.write_bytes(model.getvalue())
    return spm.SentencePieceProcessor(model_file=str(path)).vocab_size()


def build(tmp_path_factory, params, hidden, n_shards, seed):
    root = tmp_path_factory.mktemp("meta")
    vocab = params["vocab_size"]
    if vocab == -1:
        vocab = train_tokenizer(root / "tokenizer.model")
    n_kv = params.get("n_kv_heads", params["n_heads"])
    weights = random_meta_weights(params["dim"], params["n_layers"], params["n_heads"], n_kv, vocab, hidden, seed)
    src = root / "llama-2-tiny"
    write_meta_checkpoint(src, params, weights, n_shards)
    if (root / "tokenizer.model").exists():
        (src / "tokenizer.model").write_bytes((root / "tokenizer.model").read_bytes())
    out = convert(src, root / "converted", progress=False)
    ref = hf_llama(weights, dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"],
                   n_kv_heads=n_kv, vocab_size=vocab, hidden_dim=hidden, norm_eps=params["norm_eps"],
                   rope_theta=params.get("rope_theta", 10000.0))
    return llama_np.load(out), ref


@pytest.fixture(scope="module", params=["gqa_2shards_ffn_multiplier", "rope_theta_500000"])
def pair(request, tmp_path_factory):
    if request.param == "gqa_2shards_ffn_multiplier":
        return build(tmp_path_factory, GQA_PARAMS, GQA_HIDDEN, n_shards=2, seed=1)
    return build(tmp_path_factory, THETA_PARAMS, THETA_HIDDEN, n_shards=1, seed=2)


def two_prompts(vocab, T=40, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([np.r_[1, rng.integers(3, vocab, T - 1)], np.r_[1, rng.integers(3, vocab, T - 1)]])


def test_converted_config_follows_params_json(pair):
    model, ref = pair
    c = model.config
    assert c.hidden_dim == ref.config.intermediate_size
    assert c.n_kv_heads == ref.config.num_key_value_heads
    assert c.max_seq_len == 4096                              # LLaMA 2's context when params.json is silent


def test_full_prefill_logits_match_transformers_for_a_batch_of_two(pair):
    model, ref = pair
    tokens = two_prompts(model.config.vocab_size)
    ours = model.forward(tokens, start_pos=0, cache=model.new_cache(2, 64))
    assert ours.dtype == np.float32
    assert rel_err(ours, hf_logits(ref, tokens)) < TOL


def test_prefill_then_decode_through_cache_matches_full_sequence(pair):
    model, ref = pair
    tokens = two_prompts(model.config.vocab_size, T=32, seed=1)
    expected = hf_logits(ref, tokens)
    cache = model.new_cache(batch_size=2, max_seq_len=32)
    got = [model.forward(tokens[:, :11], 0, cache)]
    for pos in range(11, 32):
        got.append(model.forward(tokens[:, pos:pos + 1], pos, cache))
    assert rel_err(np.concatenate(got, axis=1), expected) < TOL


def test_chunked_prefill_masks_correctly_at_any_start_pos(pair):
    model, ref = pair
    tokens = two_prompts(model.config.vocab_size, T=30, seed=2)
    expected = hf_logits(ref, tokens)
    cache = model.new_cache(batch_size=2, max_seq_len=30)
    got = [model.forward(tokens[:, a:b], a, cache) for a, b in [(0, 7), (7, 19), (19, 30)]]
    assert rel_err(np.concatenate(got, axis=1), expected) < TOL


def test_long_positions_match_transformers(pair):
    """Rotary angles at positions ~1000 (where float32 rounding of angles matters)."""
    model, ref = pair
    rng = np.random.default_rng(3)
    tokens = np.r_[1, rng.integers(3, model.config.vocab_size, 1099)][None]
    ref.config.max_position_embeddings = 2048
    expected = hf_logits(ref, tokens)
    cache = model.new_cache(1, 1100)
    ours = np.concatenate([model.forward(tokens[:, :1090], 0, cache)]
                          + [model.forward(tokens[:, p:p + 1], p, cache) for p in range(1090, 1100)], axis=1)
    assert rel_err(ours, expected) < TOL


def test_hf_permutation_turns_meta_interleaved_rotary_into_hf_half_split():
    """How we checked the reference's weight permutation: rotate q the Meta way (complex pairs of
    interleaved neighbours, as in Meta's apply_rotary_emb) and the HF way (rotate_half on the
    permuted rows); the results must be the same vectors up to that row permutation."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    n_heads, hd, dim, T = 4, 16, 64, 9
    wq = torch.randn(n_heads * hd, dim)
    x = torch.randn(T, dim)
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    angles = torch.outer(torch.arange(T).float(), freqs)                       # (T, hd/2)
    # Meta: complex multiply of interleaved pairs.
    q_meta = (x @ wq.T).view(T, n_heads, hd // 2, 2)
    q_meta = torch.view_as_real(torch.view_as_complex(q_meta) * torch.polar(torch.ones_like(angles), angles)[:, None])
    q_meta = q_meta.reshape(T, n_heads, hd)
    # HF: permuted rows, half-split rotation.
    q_hf = (x @ meta_to_hf_permute(wq, n_heads).T).view(1, T, n_heads, hd).transpose(1, 2)
    emb = torch.cat([angles, angles], dim=-1)[None]
    q_hf, _ = apply_rotary_pos_emb(q_hf, q_hf, emb.cos(), emb.sin())
    q_hf = q_hf[0].transpose(0, 1)                                               # (T, heads, hd)
    # Meta's pair i sits at (2i, 2i+1); HF's at (i, i + hd/2).
    perm = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])
    torch.testing.assert_close(q_meta[..., perm], q_hf, rtol=1e-5, atol=1e-5)


def test_converted_weights_are_the_checkpoint_rounded_to_float16(tmp_path):
    weights = random_meta_weights(32, 1, 4, 4, 50, 96, seed=5)
    params = {"dim": 32, "multiple_of": 32, "n_heads": 4, "n_layers": 1, "norm_eps": 1e-5, "vocab_size": 50}
    write_meta_checkpoint(tmp_path / "src", params, weights, n_shards=2)
    model = llama_np.load(convert(tmp_path / "src", tmp_path / "out", progress=False))
    for name, t in weights.items():
        np.testing.assert_array_equal(np.asarray(model.weights[name]), t.half().numpy(), err_msg=name)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["hidden_dim"] == 96 and config["source"]["format"] == "meta"
