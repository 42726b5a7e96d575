"""Generation as Meta's generation.py does it: batches, logprobs and echo, sampling, and the CLI.

The model is the demo's random-weight LLaMA (dim 64, 2 layers, GQA 4/2, a trained 320-piece
tokenizer); the reference is transformers' LlamaForCausalLM holding the same float16 weights.
"""
import numpy as np
import pytest
import torch

import llama_np
from conftest import assert_one_line_error, run_cli
from llama_np import LlamaNpError
from llama_np.generation import generate_batch, text_completion
from llama_np.sampling import SamplingParams, sample, top_k_filter, top_p_filter
from reference import hf_llama, hf_logits

PROMPTS = ["Once upon a time", "the sea", "A little robot who lived by the sea looked up at the sky", "hi"]


@pytest.fixture(scope="module")
def model(random_model_dir):
    return llama_np.load(random_model_dir)


@pytest.fixture(scope="module")
def ref(model):
    c = model.config
    weights = {n: torch.from_numpy(np.asarray(w, dtype=np.float32)) for n, w in model.weights.items()}
    return hf_llama(weights, dim=c.dim, n_layers=c.n_layers, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
                    vocab_size=c.vocab_size, hidden_dim=c.hidden_dim, norm_eps=c.norm_eps, rope_theta=c.rope_theta,
                    max_seq_len=c.max_seq_len)


def ids_of(model, prompts):
    return [model.tokenizer.encode(p, bos=True, eos=False) for p in prompts]


def one_by_one(model, prompts, n):
    return [model.generate(p, max_new_tokens=n, temperature=0.0) for p in prompts]


def eos_shadowing(model, token):
    """The same model, except that EOS's output row is 1.5 x `token`'s: wherever `token` would win
    greedily (with a positive logit), EOS wins instead, so rows end at different steps."""
    w = dict(model.weights)
    out = np.array(w["output.weight"])
    out[model.tokenizer.eos_id] = 1.5 * out[token]
    w["output.weight"] = out
    return llama_np.Llama(model.config, w, model.tokenizer)


def test_batched_greedy_generation_equals_one_by_one(model):
    prompts = ids_of(model, PROMPTS)
    assert len({len(p) for p in prompts}) == len(prompts)            # all different lengths
    expected = one_by_one(model, prompts, 16)
    assert all(len(e) == 16 for e in expected)
    got, logprobs = generate_batch(model, prompts, max_new_tokens=16, temperature=0.0)
    assert got == expected and logprobs is None


def test_batched_rows_stop_at_their_own_eos_like_one_by_one(model):
    prompts = ids_of(model, PROMPTS)
    stopper = eos_shadowing(model, one_by_one(model, prompts, 16)[0][5])
    expected = one_by_one(stopper, prompts, 16)
    lengths = [len(e) for e in expected]
    assert min(lengths) < 16 and max(lengths) == 16, lengths          # some rows end early, some run full
    got, _ = generate_batch(stopper, prompts, max_new_tokens=16, temperature=0.0)
    assert got == expected


def test_seeded_sampling_repeats_itself_and_depends_on_the_seed(model):
    [prompt] = ids_of(model, ["Once upon a time"])
    sampling = dict(max_new_tokens=20, temperature=0.9, top_p=0.8, top_k=50)
    first = model.generate(prompt, seed=11, **sampling)
    assert model.generate(prompt, seed=11, **sampling) == first
    assert model.generate(prompt, seed=12, **sampling) != first


def reference_logprobs(ref, ids):
    """[0.0] + log softmax(transformers logits at j-1)[ids[j]] for j >= 1, as Meta reports them; and the scale."""
    logits = hf_logits(ref, np.array([ids]))[0]                                      # (T, V)
    logsm = torch.log_softmax(torch.from_numpy(logits).double(), dim=-1).numpy()
    return np.r_[0.0, logsm[np.arange(len(ids) - 1), ids[1:]]], np.abs(logits).max()


def test_logprobs_with_echo_equal_log_softmax_of_transformers_forward(model, ref):
    prompts = ids_of(model, PROMPTS)
    tokens, logprobs = generate_batch(model, prompts, max_new_tokens=12, temperature=1.0, top_p=0.95, seed=3, logprobs=True, echo=True)
    for prompt, toks, lps in zip(prompts, tokens, logprobs):
        assert toks[:len(prompt)] == prompt and len(lps) == len(toks) > len(prompt)
        expected, scale = reference_logprobs(ref, toks)
        assert np.max(np.abs(np.array(lps) - expected)) <= 1e-4 * scale


def test_logprobs_without_echo_cover_the_new_tokens_only(model, ref):
    prompts = ids_of(model, PROMPTS[:2])
    tokens, logprobs = generate_batch(model, prompts, max_new_tokens=8, temperature=0.0, logprobs=True)
    for prompt, toks, lps in zip(prompts, tokens, logprobs):
        expected, scale = reference_logprobs(ref, prompt + toks)
        assert len(lps) == len(toks) == 8
        assert np.max(np.abs(np.array(lps) - expected[len(prompt):])) <= 1e-4 * scale


def test_zero_new_tokens_with_echo_scores_the_prompts(model, ref):
    prompts = ids_of(model, PROMPTS[:3])
    tokens, logprobs = generate_batch(model, prompts, max_new_tokens=0, logprobs=True, echo=True)
    assert tokens == prompts
    for prompt, lps in zip(prompts, logprobs):
        expected, scale = reference_logprobs(ref, prompt)
        assert np.max(np.abs(np.array(lps) - expected)) <= 1e-4 * scale


def test_text_completion_returns_meta_shaped_results(model):
    results = text_completion(model, PROMPTS[:2], max_new_tokens=6, temperature=0.0, logprobs=True)
    new = one_by_one(model, ids_of(model, PROMPTS[:2]), 6)
    tok = model.tokenizer
    for r, ids in zip(results, new):
        assert r["generation"] == tok.decode(ids)
        assert r["tokens"] == [tok.decode([t]) for t in ids] and r["token_ids"] == ids and len(r["logprobs"]) == 6
    echoed = text_completion(model, PROMPTS[:1], max_new_tokens=6, temperature=0.0, echo=True)
    assert echoed[0]["generation"] == tok.decode(ids_of(model, PROMPTS[:1])[0] + new[0])


def test_text_completion_stops_before_a_stop_string(model):
    full = text_completion(model, PROMPTS, max_new_tokens=24, temperature=0.0)
    stop = full[0]["generation"][6:9]
    stopped = text_completion(model, PROMPTS, max_new_tokens=24, temperature=0.0, stop=[stop])
    for f, s in zip(full, stopped):
        cut = f["generation"].find(stop)
        assert s["generation"] == (f["generation"] if cut < 0 else f["generation"][:cut])
    assert stopped[0]["generation"] == full[0]["generation"][:full[0]["generation"].find(stop)]


def test_top_p_and_top_k_filters_by_hand():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    # sorted 0.5, 0.3, 0.15, 0.05; mass before each: 0, 0.5, 0.8, 0.95 -> with p=0.7 keep 0.5 and 0.3.
    np.testing.assert_allclose(top_p_filter(probs, 0.7), [0, 0.5 / 0.8, 0, 0.3 / 0.8])
    np.testing.assert_allclose(top_p_filter(probs, 0.5), [0, 0.5 / 0.8, 0, 0.3 / 0.8])   # 0.5 is not > 0.5
    np.testing.assert_allclose(top_p_filter(probs, 0.45), [0, 1, 0, 0])       # 0.5 alone already exceeds p
    np.testing.assert_allclose(top_k_filter(probs, 3), [0, 0.5 / 0.95, 0.15 / 0.95, 0.3 / 0.95])
    logits = np.log(probs)
    assert sample(logits, SamplingParams(temperature=0.0), np.random.default_rng(0)) == 1
    draws = [sample(logits, SamplingParams(temperature=1.0, top_p=0.7), np.random.default_rng(s)) for s in range(200)]
    assert set(draws) == {1, 3}


@pytest.mark.parametrize("kwargs", [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1},
                                    {"max_new_tokens": -1}, {"stop": [""]}])
def test_bad_options_raise(model, kwargs):
    with pytest.raises(LlamaNpError):
        text_completion(model, ["hi"], **{"max_new_tokens": 4, **kwargs})


def test_prompt_that_fills_the_context_is_refused(model):
    too_long = [1] + [5] * (model.config.max_seq_len - 1)
    with pytest.raises(LlamaNpError, match="no room"):
        generate_batch(model, [[1, 5], too_long], max_new_tokens=4)


# ---- the CLI


def test_cli_generate_echo_prints_prompt_then_its_greedy_continuation(model, random_model_dir):
    r = run_cli("generate", random_model_dir, "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "10",
                "--echo")
    assert r.returncode == 0, r.stderr
    [prompt] = ids_of(model, ["Once upon a time"])
    new = model.generate(prompt, max_new_tokens=10, temperature=0.0)
    assert r.stdout == model.tokenizer.decode(prompt + new) + "\n"
    r = run_cli("generate", random_model_dir, "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "10")
    assert r.stdout == model.tokenizer.decode(new) + "\n"                      # without --echo: the new text only


def test_cli_generate_batch_with_logprobs_lists_every_token(model, random_model_dir):
    r = run_cli("generate", random_model_dir, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--temperature", "0",
                "--max-new-tokens", "5", "--logprobs")
    assert r.returncode == 0, r.stderr
    results = text_completion(model, PROMPTS[:2], max_new_tokens=5, temperature=0.0, logprobs=True)
    assert r.stdout.count("=== ") == 2 and r.stdout.count("--- logprob") == 2
    for result in results:
        for t, lp in zip(result["token_ids"], result["logprobs"]):
            assert f"{lp:10.4f}  {t:6d}  " in r.stdout


@pytest.mark.parametrize("args", [["--temperature", "-1"], ["--top-p", "0"], ["--top-p", "1.5"], ["--top-k", "-2"],
                                  ["--max-new-tokens", "-1"], ["--stop", ""], ["--temperature", "warm"],
                                  ["--prompt", "x " * 400]])
def test_cli_generate_bad_options_give_one_line_error(random_model_dir, args):
    base = [] if "--prompt" in args else ["--prompt", "hi"]
    r = run_cli("generate", random_model_dir, *base, *args)
    assert_one_line_error(r)
    assert r.stdout == ""
