"""Perplexity: sliding windows scored by us against the same windows scored by transformers."""
import re

import numpy as np
import pytest
import torch

import llama_np
from conftest import assert_one_line_error, run_cli
from llama_np import LlamaNpError
from llama_np.perplexity import perplexity_result, windows
from reference import hf_llama

TEXT = ("Once upon a time there was a little robot who lived by the sea. Every morning it looked at the sky "
        "and counted the boats. One day a bird asked it why; the robot said: because the sea is full of "
        "stories, and somebody has to keep count. The bird laughed, and stayed.")


@pytest.fixture(scope="module")
def pair(random_model_dir):
    model = llama_np.load(random_model_dir)
    c = model.config
    weights = {n: torch.from_numpy(np.asarray(w, dtype=np.float32)) for n, w in model.weights.items()}
    ref = hf_llama(weights, dim=c.dim, n_layers=c.n_layers, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
                   vocab_size=c.vocab_size, hidden_dim=c.hidden_dim, norm_eps=c.norm_eps, rope_theta=c.rope_theta,
                   max_seq_len=c.max_seq_len)
    return model, ref


def reference_perplexity(ref, ids, context, stride):
    """Hugging Face's perplexity-guide loop, with torch's cross-entropy summed over the scored labels
    (-100 = not scored here), so that the mean is per token."""
    ids = torch.tensor([ids])
    n, nll_sum, n_scored, prev_end = ids.shape[1], 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        target_len = end - prev_end                       # the tokens not scored by an earlier window
        input_ids = ids[:, begin:end]
        labels = input_ids.clone()
        labels[:, :-target_len] = -100
        with torch.no_grad():
            logits = ref(input_ids, use_cache=False).logits.double()
        nll = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
        nll_sum, n_scored = nll_sum + nll.item(), n_scored + int((labels[0, 1:] != -100).sum())
        prev_end = end
        if end == n:
            break
    assert n_scored == n - 1                              # every token but BOS, once
    return float(np.exp(nll_sum / n_scored))


@pytest.mark.parametrize("context,stride,text", [(32, 20, TEXT), (48, 47, TEXT), (12, 1, TEXT[:40]),
                                                 (None, None, TEXT * 4)],   # default context: all 256 positions
                         ids=["context32_stride20", "context48_stride47", "stride1", "defaults"])
def test_perplexity_equals_transformers_on_the_same_windows(pair, context, stride, text):
    model, ref = pair
    ids = model.tokenizer.encode(text, bos=True)
    c = context or model.config.max_seq_len
    ours = llama_np.perplexity(model, text, context=context, stride=stride)
    expected = reference_perplexity(ref, ids, c, stride or c // 2)
    assert len(ids) > c
    assert abs(np.log(ours) - np.log(expected)) < 1e-5, (ours, expected)     # mean NLL; measured ~1e-8


def test_windows_score_each_token_once_with_bounded_left_context():
    assert windows(10, 4, 3) == [(0, 4, 1), (3, 7, 4), (6, 10, 7)]          # by hand
    for n, context, stride in [(100, 16, 5), (57, 57, 1), (3, 2, 1), (200, 64, 63)]:
        scored = [t for begin, end, first in windows(n, context, stride) for t in range(first, end)]
        assert scored == list(range(1, n))
        for begin, end, first in windows(n, context, stride):
            assert end - begin <= context and first > begin


@pytest.mark.parametrize("kwargs", [{"context": 1}, {"context": 10_000}, {"context": 16, "stride": 16},
                                    {"context": 16, "stride": 0}])
def test_bad_windows_are_refused(pair, kwargs):
    with pytest.raises(LlamaNpError):
        llama_np.perplexity(pair[0], TEXT, **kwargs)


def test_cli_perplexity_reports_the_same_number_and_a_rate(pair, random_model_dir, tmp_path):
    f = tmp_path / "text.txt"
    f.write_text(TEXT, encoding="utf-8")
    r = run_cli("perplexity", random_model_dir, f, "--context", "32", "--stride", "12")
    assert r.returncode == 0, r.stderr
    expected = perplexity_result(pair[0], TEXT, 32, 12)
    assert f"perplexity {expected.perplexity:.4f}" in r.stdout
    assert re.search(r"\d+\.\d tok/s", r.stdout) and f"over {expected.n_scored} tokens" in r.stdout


@pytest.mark.parametrize("case", ["missing", "not_utf8", "stride_too_big", "context_too_big"])
def test_cli_perplexity_bad_input_gives_one_line_error(random_model_dir, tmp_path, case):
    f = tmp_path / "t.txt"
    f.write_bytes(b"caf\xe9 latin-1" if case == "not_utf8" else TEXT.encode())
    args = {"missing": [tmp_path / "nope.txt"], "not_utf8": [f], "stride_too_big": [f, "--context", "8", "--stride", "8"],
            "context_too_big": [f, "--context", "100000"]}[case]
    assert_one_line_error(run_cli("perplexity", random_model_dir, *args))
