"""`llama-np compare MODEL_DIR`: the per-layer, per-component table of ours vs a PyTorch forward pass.

The tool's reference (Meta's forward re-written in torch, inside llama_np/compare.py) is itself
checked against transformers' LlamaForCausalLM logits here, so the table compares us with an
independent implementation, not with a copy of ourselves.
"""
import io
import re

import numpy as np
import pytest

import llama_np
from conftest import assert_one_line_error, run_cli
from llama_np import compare
from llama_np.config import ModelArgs
from llama_np.weights import write_model_dir
from reference import hf_llama, hf_logits, random_meta_weights, rel_err

TOL = 1e-4
SHAPE = dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=101, hidden_dim=160)


def write_model(out, weights) -> str:
    args = ModelArgs(**SHAPE, max_seq_len=128)
    return write_model_dir(out, args, [(n, (lambda t=t: t.float().numpy())) for n, t in weights.items()],
                           {"format": "test"}, progress=False)


@pytest.fixture(scope="module")
def weights():
    return random_meta_weights(**SHAPE, seed=21)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, weights):
    return write_model(tmp_path_factory.mktemp("compare") / "model", weights)


def test_compare_cli_prints_every_layer_and_a_max_difference_below_1e_4(model_dir):
    r = run_cli("compare", model_dir, "--tokens", 12)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if re.match(r"\s+\d+\s", line)]
    assert [int(row.split()[0]) for row in rows] == list(range(SHAPE["n_layers"]))
    assert all(len(row.split()) == 1 + len(compare.LAYER_COMPONENTS) for row in rows)
    assert all(float(cell) < TOL for row in rows for cell in row.split()[1:])
    worst = float(re.search(r"max relative difference: (\S+) at", r.stdout).group(1))
    assert worst < TOL and r.stdout.rstrip().endswith("OK")
    assert "over 12 tokens" in r.stdout


def test_compare_reference_logits_equal_transformers_logits(model_dir, weights):
    """The tool's torch forward is checked against transformers, so its table is meaningful."""
    model = llama_np.load(model_dir)
    tokens = compare.compare_tokens(model, 20, seed=4)                            # (1, 20)
    recorded = {}
    for part in compare.torch_reference(model, tokens):
        recorded.update(part)
    expected = hf_logits(hf_llama(weights, **SHAPE), tokens)
    assert rel_err(recorded["logits"], expected) < TOL
    assert tokens[0, 0] == 1 and tokens.shape == (1, 20)


def test_compare_points_at_the_first_tensor_that_differs(tmp_path, model_dir, weights):
    """Ours computed with a slightly wrong wk in layer 1: everything before is fine, layer 1's k is
    the first tensor over the tolerance, and the summary says so."""
    model = llama_np.load(model_dir)
    bad = dict(weights)
    bad["layers.1.attention.wk.weight"] = weights["layers.1.attention.wk.weight"] * 1.01
    model.forward = llama_np.load(write_model(tmp_path / "bad", bad)).forward   # ours runs the bad weights
    diffs = compare.run_compare(model, compare.compare_tokens(model, 10), out=io.StringIO())
    assert compare.first_above(diffs) == "layers.1.k"
    assert all(diffs[n] < TOL for n in list(diffs)[:list(diffs).index("layers.1.k")])
    assert "MISMATCH, first at layers.1.k" in compare.summary(diffs)


def test_relative_difference_is_inf_when_the_masked_entries_disagree():
    ref = np.array([[0.5, -np.inf], [0.25, 0.75]])
    assert compare.relative_difference(ref.copy(), ref) == 0.0
    unmasked = np.array([[0.5, 0.1], [0.25, 0.75]])
    assert compare.relative_difference(unmasked, ref) == np.inf
    assert compare.relative_difference(ref[:1], ref) == np.inf
    assert compare.relative_difference(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == pytest.approx(0.5)


@pytest.fixture
def torch_hidden(tmp_path, monkeypatch):
    """PYTHONPATH for run_cli with a `torch` package that fails to import, as if torch were absent."""
    blocker = tmp_path / "no_torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named torch (hidden by the test)')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocker.parent))


def test_compare_without_torch_exits_2_with_one_line_saying_to_install_it(torch_hidden, model_dir):
    r = run_cli("compare", model_dir)
    assert_one_line_error(r, "pip install torch")
    assert r.stdout == ""


def test_the_rest_of_the_cli_still_runs_without_torch(torch_hidden):
    """Only compare imports torch: the demo (build, load, generate) works with torch hidden."""
    r = run_cli("demo", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr


def test_compare_on_a_missing_model_dir_is_a_one_line_error_exit_2():
    assert_one_line_error(run_cli("compare", "/nonexistent/model"), "not a directory")


@pytest.mark.parametrize("kwargs, message", [({"n_tokens": 0}, "--tokens must be >= 1"),
                                             ({"n_tokens": 500}, "exceed the model's context"),
                                             ({"n_tokens": 4, "prompt": "hi"}, "needs a model with tokenizer.model")])
def test_compare_rejects_bad_token_requests_as_bad_input(model_dir, kwargs, message):
    with pytest.raises(llama_np.LlamaNpError, match=message):
        compare.compare_tokens(llama_np.load(model_dir), **kwargs)
