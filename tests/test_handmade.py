"""The hand-written LLaMA (llama_np/handmade.py) does what its derivation says, and is an ordinary LLaMA.

What it must do, checked on sequences it was not written for (random ids from the whole demo
vocabulary, BOS, EOS, unk and byte pieces included, many seeds): continue a repetition under greedy
decoding through the KV cache, in batches; its previous-token head looks exactly one back at every
position of the context; its induction head looks just after the earlier occurrence. What it is:
transformers' LlamaForCausalLM, given the same weights, computes the same logits; `llama-np compare`
agrees tensor by tensor. The numbers its docstrings promise (code overlap, the rotary score
profile, RMSNorm undone, the blank start) are recomputed here from the stored weights and the trace.
"""
import time

import numpy as np
import pytest
import torch

import llama_np
from conftest import run_cli
from llama_np import handmade
from llama_np.demo import build_handmade_model
from llama_np.generation import generate_batch
from reference import hf_llama, hf_logits, rel_err


@pytest.fixture(scope="module")
def model(handmade_model_dir):
    return llama_np.load(handmade_model_dir)


def repeated(n: int, seed: int, vocab_size: int, low: int = 0, bos: bool = True) -> np.ndarray:
    """[BOS] + A + A with A n ids drawn uniformly from [low, vocab_size)."""
    a = np.random.default_rng(seed).integers(low, vocab_size, n)
    return np.concatenate([[1] if bos else [], a, a]).astype(np.int64)


def greedy_through_cache(model, prompts: np.ndarray, n_new: int) -> np.ndarray:
    """Prefill (B, T) in one call, then n_new greedy decode steps of one token each, on the cache."""
    B, T = prompts.shape
    cache = model.new_cache(B, T + n_new)
    logits = model.forward(prompts, start_pos=0, cache=cache)                  # (B, T, V)
    out = []
    for pos in range(T, T + n_new):
        token = logits[:, -1].argmax(-1)                                        # (B,)
        out.append(token)
        logits = model.forward(token[:, None], start_pos=pos, cache=cache)     # (B, 1, V)
    return np.stack(out, axis=1)                                                # (B, n_new)


def test_it_is_an_ordinary_llama_2_shape(model):
    a = model.config
    assert a.n_kv_heads < a.n_heads and a.n_heads % a.n_kv_heads == 0       # grouped-query attention
    assert a.head_dim % 2 == 0 and a.max_seq_len >= 1024 and a.rope_theta > 0
    assert model.tokenizer.n_words == a.vocab_size
    ffn = [np.abs(np.asarray(model.weights[f"layers.0.feed_forward.{n}.weight"], np.float32)).max() for n in ("w1", "w2", "w3")]
    assert min(ffn) > 0                                                         # SwiGLU is there and used


def test_greedy_decoding_through_the_cache_continues_repeated_random_ids_in_a_batch(model):
    """Every id of the vocabulary may occur (BOS, EOS, unk, bytes); four seeds as one batch; the prompt
    holds the first half (300 ids) and 200 of the second; greedy decoding writes the last 100."""
    V, n, k = model.config.vocab_size, 300, 200
    seqs = np.stack([repeated(n, seed, V) for seed in range(4)])                 # (4, 601)
    new = greedy_through_cache(model, seqs[:, :1 + n + k], n - k)              # (4, 100)
    accuracy = (new == seqs[:, 1 + n + k:]).mean(axis=1)
    assert accuracy.min() >= 0.99, accuracy


def test_generate_batch_continues_repetitions_of_different_lengths(model):
    """Meta's batched loop (right-padded prompts of different lengths, one cache); the prompts hold
    only 4 tokens of the repeat, the rest is generated. Ids avoid BOS, EOS and unk here only because
    generation ends at EOS by design."""
    V = model.config.vocab_size
    lengths, k = (20, 40, 60), 4
    seqs = [repeated(n, 10 + n, V, low=3) for n in lengths]
    prompts = [s[:1 + n + k].tolist() for s, n in zip(seqs, lengths)]
    out, _ = generate_batch(model, prompts, max_new_tokens=max(lengths) - k, temperature=0.0)
    for s, n, new in zip(seqs, lengths, out):
        want = s[1 + n + k:].tolist()
        assert np.mean(np.array(new[:len(want)]) == want) >= 0.99, (n, new[:20], want[:20])


@pytest.fixture(scope="module")
def long_run(model):
    """One pass over a whole context of BOS + A + A (A: 1023 random ids of the whole vocabulary)."""
    seq = repeated(model.config.max_seq_len // 2 - 1, 99, model.config.vocab_size)   # (2047,)
    trace = {}
    logits = model.forward(seq[None], trace=trace)
    return seq, logits, trace


def test_previous_token_heads_look_exactly_d_back_at_every_position_of_the_context(long_run):
    """Layer 0, head 0: >= 0.9 (in fact > 0.999) of its attention on t-1, for every t >= 1 up to the
    end of the context; heads 1..3 likewise on t-2, t-3, t-4."""
    seq, _, trace = long_run
    probs = trace["layers.0.probs"][0]                                          # (H, T, S)
    assert handmade.PREVIOUS_TOKEN_HEAD == (0, 0)
    t = np.arange(1, len(seq))
    assert probs[0, t, t - 1].min() >= 0.9
    for h in range(probs.shape[0]):
        t = np.arange(h + 1, len(seq))
        assert probs[h, t, t - h - 1].min() > 0.999, h


def test_previous_token_scores_are_the_derived_cosine_ladder(long_run, model):
    """The docstring's profile, recomputed from its formula alone: score(t, j) = sum_k a_k cos(2^-k (t-j-1)),
    a = 6 (6, 1, ..., 1); the peak 90 is at j = t-1 and every other key scores >= 16.6 below it."""
    seq, _, trace = long_run
    scores = trace["layers.0.scores"][0, 0, -1]                                 # (S,) the last query, head 0
    x = (len(seq) - 1) - np.arange(len(seq)) - 1                                # t - j - 1
    a = 6.0 * np.array([6, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    derived = (a[:, None] * np.cos(2.0 ** -np.arange(10)[:, None] * x)).sum(0)
    assert np.abs(scores - derived).max() < 0.05
    assert scores.argmax() == len(seq) - 2 and np.sort(scores)[-1] - np.sort(scores)[-2] > 16.5


def test_induction_head_looks_just_after_the_earlier_occurrence(long_run):
    """Layer 1, head 0, in the second half of BOS + A + A: >= 0.9 on the position after the earlier
    occurrence. (The first token of the repeat is left out: with nothing before it to match, a token
    that occurs twice in A is genuinely ambiguous; the test below has A without repeats.)"""
    seq, logits, trace = long_run
    n = (len(seq) - 1) // 2
    probs = trace["layers.1.probs"][0, 0]                                       # (T, S)
    t = np.arange(n + 2, len(seq))
    assert handmade.INDUCTION_HEAD == (1, 0)
    assert probs[t, t - n + 1].min() >= 0.9
    assert (logits[0, t[:-1]].argmax(-1) == seq[t[:-1] + 1]).mean() == 1.0        # and predicts what comes there


def test_induction_head_without_repeated_tokens_from_the_first_token_of_the_repeat(model):
    V = model.config.vocab_size
    a = np.random.default_rng(5).permutation(V)[:200]                         # 200 distinct ids
    seq = np.concatenate([[1], a, a])
    trace = {}
    model.forward(seq[None], trace=trace)
    probs = trace["layers.1.probs"][0, 0]
    t = np.arange(201, len(seq))
    assert probs[t, t - 200 + 1].min() >= 0.9


def test_a_repeat_restarts_at_the_beginning_when_its_first_token_occurred_twice(model):
    """BOS + A + A[0], where A[0] also occurs in the middle of A: nothing before the last token tells
    the two occurrences apart, and the one at the start of the text wins (the restart score)."""
    V = model.config.vocab_size
    a = np.random.default_rng(8).permutation(np.arange(3, V))[:120]
    a[60] = a[0]
    seq = np.concatenate([[1], a, a[:1]])
    trace = {}
    logits = model.forward(seq[None], trace=trace)
    assert trace["layers.1.probs"][0, 0, -1, 2] > 0.9                         # just after the first A[0]
    assert logits[0, -1].argmax() == a[1]


def test_with_nothing_to_copy_it_looks_at_the_blank_start_and_ends_the_text(model):
    """No earlier occurrence of the last token: the induction head rests on position 0 (blanked by
    layer 0's SwiGLU) and end-of-text wins."""
    tok = model.tokenizer
    ids = tok.encode("hello world")
    trace = {}
    logits = model.forward(np.array([ids]), trace=trace)
    assert trace["layers.1.probs"][0, 0, -1, 0] > 0.9
    assert logits[0, -1].argmax() == tok.eos_id
    assert model.generate("hello world", max_new_tokens=5, temperature=0.0) == ""


def test_start_detector_fires_only_at_the_start(model):
    """Layer 0's SwiGLU writes only at position 0 of a BOS-led text, not at a BOS later on, and
    blanks that position's token (the residual holds no BOS code there any more)."""
    V = model.config.vocab_size
    seq = np.concatenate([[1], np.random.default_rng(3).integers(3, V, 30), [1, 1], np.random.default_rng(4).integers(3, V, 30)])
    trace = {}
    model.forward(seq[None], trace=trace)
    ffn = np.linalg.norm(trace["layers.0.ffn_out"][0], axis=-1)                 # (T,)
    assert ffn[0] > 1 and ffn[1:].max() < 1e-2
    lay = handmade.make_layout(V)
    bos_code = np.asarray(model.weights["tok_embeddings.weight"][1], np.float32)[lay.token(0)]
    assert abs(trace["layers.0.out"][0, 0, lay.token(0)] @ bos_code) < 0.01     # blank
    assert trace["layers.0.out"][0, 31, lay.token(0)] @ bos_code > 0.99          # a later BOS stays a token


def test_token_codes_are_unit_length_and_overlap_at_most_one_over_sqrt_p(model):
    lay = handmade.make_layout(model.config.vocab_size)
    codes = np.asarray(model.weights["tok_embeddings.weight"], np.float64)[:, lay.token(0)]   # (V, C) as stored
    gram = codes @ codes.T
    assert np.allclose(np.diag(gram), 1, atol=2e-3)
    assert np.abs(gram - np.diag(np.diag(gram))).max() <= 1 / np.sqrt(handmade.P) + 2e-3


def test_rms_norms_are_undone_so_each_block_reads_the_stream_itself(long_run):
    _, _, trace = long_run
    for norm, stream in (("layers.0.attention_norm", "tok_embeddings"), ("layers.1.attention_norm", "layers.0.out")):
        x, y = trace[norm][0], trace[stream][0]
        assert np.abs(x - y).max() / np.abs(y).max() < 2e-3, norm


def test_transformers_llama_gives_the_same_logits(model):
    """Meta's weights -> LlamaForCausalLM (rows of wq, wk permuted to HF's rotary layout), float32."""
    a = model.config
    weights = {n: torch.from_numpy(np.asarray(w, np.float32)) for n, w in model.weights.items()}
    hf = hf_llama(weights, dim=a.dim, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads,
                  vocab_size=a.vocab_size, hidden_dim=a.hidden_dim, norm_eps=a.norm_eps, rope_theta=a.rope_theta,
                  max_seq_len=a.max_seq_len)
    seqs = np.stack([repeated(150, seed, a.vocab_size) for seed in (1, 2)])    # (2, 301)
    expected = hf_logits(hf, seqs)
    ours = model.forward(seqs)
    assert rel_err(ours, expected) < 1e-4
    assert np.array_equal(ours.argmax(-1), expected.argmax(-1))


def test_llama_np_compare_agrees_on_every_tensor(handmade_model_dir):
    r = run_cli("compare", handmade_model_dir, "--prompt", "The cat sat on the mat. The cat sat on the")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("OK")


def test_building_is_deterministic_and_takes_about_a_second(tmp_path, handmade_model_dir):
    t0 = time.perf_counter()
    out = build_handmade_model(tmp_path / "again")
    seconds = time.perf_counter() - t0
    assert (out / "model.safetensors").read_bytes() == (handmade_model_dir / "model.safetensors").read_bytes()
    assert (out / "config.json").read_text() == (handmade_model_dir / "config.json").read_text()
    assert seconds < 10, f"building took {seconds:.1f} s"
