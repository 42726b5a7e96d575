"""int8 weights: the format, the product, the accuracy, and every command on an int8 directory.

References: float64 products computed here by hand; the safetensors library reading our file on
its own; transformers' LlamaForCausalLM running the dequantized weights (scale * q, taken from the
file by safetensors, not by our reader); the error bound s_i / 2 * sum|x| derived in quantize.py.
"""
import json
import shutil

import numpy as np
import safetensors.numpy
import pytest
import torch
from safetensors.numpy import load_file

import llama_np
from conftest import assert_one_line_error, run_cli
from llama_np.checkpoints.convert import convert, quantize
from llama_np.errors import LlamaNpError
from llama_np.kernels import linear_i8, matmul_t
from llama_np.model import Llama
from llama_np.quantize import Int8Rows, dequantize, product_error_bound, quantize_rows, rounding_error
from llama_np.spec import expected_shapes, scale_name
from reference import hf_llama, hf_logits, rel_err, write_meta_checkpoint

TOL = 1e-4
SHAPE = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=192, vocab_size=300)
PARAMS = {"dim": 64, "multiple_of": 64, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "norm_eps": 1e-5,
          "vocab_size": 300}


def exact_int8_weights(seed=0) -> dict[str, torch.Tensor]:
    """A random LLaMA state dict whose matrix rows are s_i * q_ij exactly: q int in [-127, 127] with
    +-127 in every row, s_i a power of two (so bfloat16 and float16 hold every weight exactly)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(llama_np.ModelArgs(**SHAPE)).items():
        if len(shape) == 1:
            out[name] = torch.from_numpy(1 + 0.125 * rng.integers(-2, 3, shape).astype(np.float32))
            continue
        q = rng.integers(-127, 128, shape)
        q[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] = rng.choice([-127, 127], shape[0])
        s = 2.0 ** -rng.integers(9, 13, shape[0])                                  # (out,)
        out[name] = torch.from_numpy((s[:, None] * q).astype(np.float32)).to(torch.bfloat16)
    return out


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    """(Meta checkpoint dir, its weights, float16 conversion, int8 conversion, int8 by quantize)."""
    root = tmp_path_factory.mktemp("exact")
    weights = exact_int8_weights()
    src = write_meta_checkpoint(root / "meta", PARAMS, weights)
    f16 = convert(src, root / "f16", progress=False)
    return src, weights, f16, convert(src, root / "int8", progress=False, weight_type="int8"), \
        quantize(f16, root / "quantized", progress=False)


def test_rows_that_are_scales_times_int8_values_round_trip_exactly(exact):
    src, weights, _, direct, quantized = exact
    for model_dir in (direct, quantized):                       # convert --dtype int8, and quantize
        model = llama_np.load(model_dir)
        for name, w in weights.items():
            got = model.weights[name]
            expected = w.float().numpy()
            if isinstance(got, Int8Rows):
                scale = np.max(np.abs(expected), axis=1) / 127                  # the power of two
                np.testing.assert_array_equal(got.scale, scale)
                np.testing.assert_array_equal(got.q, expected / scale[:, None])
            np.testing.assert_array_equal(np.asarray(got, np.float32), expected)
    assert open(direct / "model.safetensors", "rb").read() == open(quantized / "model.safetensors", "rb").read()


def test_int8_file_holds_int8_rows_and_float32_scales_as_the_safetensors_library_reads_them(exact):
    src, weights, _, direct, _ = exact
    tensors = load_file(direct / "model.safetensors")
    config = json.loads((direct / "config.json").read_text())
    assert config["weight_type"] == "int8"
    for name, w in weights.items():
        expected = w.float().numpy()
        if len(w.shape) == 1 or name == "tok_embeddings.weight":  # norms and the embedding table: float16
            assert tensors[name].dtype == np.float16 and scale_name(name) not in tensors
            np.testing.assert_array_equal(tensors[name].astype(np.float32), expected)
            continue
        q, s = tensors[name], tensors[scale_name(name)]
        assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (w.shape[0],)
        np.testing.assert_array_equal(q * s[:, None].astype(np.float64), expected)
    assert len(tensors) == len(weights) + sum(len(w.shape) == 2 for w in weights.values()) - 1


def test_int8_model_gives_transformers_logits_of_the_same_weights_through_prefill_and_decode(exact):
    src, weights, _, direct, _ = exact
    ref = hf_llama(weights, **SHAPE, max_seq_len=512)
    model = llama_np.load(direct)
    tokens = np.random.default_rng(1).integers(3, 300, (2, 20))
    cache = model.new_cache(2, 20)
    got = np.concatenate([model.forward(tokens[:, :12], 0, cache)] +
                         [model.forward(tokens[:, p:p + 1], p, cache) for p in range(12, 20)], axis=1)
    assert rel_err(got, hf_logits(ref, tokens)) < TOL


@pytest.fixture(scope="module")
def random_int8(random_model_dir, tmp_path_factory):
    """The shared random-weight demo model (not exact multiples) and its int8 copy."""
    return random_model_dir, quantize(random_model_dir, tmp_path_factory.mktemp("q") / "int8", progress=False)


def test_random_int8_model_equals_transformers_on_weights_dequantized_from_the_file(random_int8):
    f16_dir, int8_dir = random_int8
    tensors = load_file(int8_dir / "model.safetensors")           # the safetensors library, not our reader
    weights = {n: torch.from_numpy(t.astype(np.float32) * tensors[scale_name(n)][:, None] if t.dtype == np.int8
                                   else t.astype(np.float32))
               for n, t in tensors.items() if not n.endswith("_scale")}
    model = llama_np.load(int8_dir)
    c = model.config
    ref = hf_llama(weights, dim=c.dim, n_layers=c.n_layers, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
                   vocab_size=c.vocab_size, hidden_dim=c.hidden_dim, max_seq_len=c.max_seq_len, round_to_fp16=False)
    tokens = np.random.default_rng(2).integers(3, c.vocab_size, (2, 24))
    assert rel_err(model.forward(tokens), hf_logits(ref, tokens)) < TOL


def test_every_int8_product_stays_within_the_bound_derived_from_the_scales(random_int8):
    """Each product of the int8 model, on the inputs it really saw (the trace), against the same
    product with the float16 weights in float64: |error_i| <= s_i / 2 * sum_j |x_j| (+ float32 slack)."""
    f16_dir, int8_dir = random_int8
    f16, int8 = llama_np.load(f16_dir, fp32="off"), llama_np.load(int8_dir)
    tokens = np.random.default_rng(3).integers(3, int8.config.vocab_size, (1, 16))
    trace = {}
    int8.forward(tokens, trace=trace)
    products = [("norm", "output.weight", "logits")]
    for i in range(int8.config.n_layers):
        p = f"layers.{i}."
        products += [(p + "attention_norm", p + "attention." + w + ".weight", p + w[1]) for w in ("wq", "wk", "wv")]
        products += [(p + "ffn_norm", p + "feed_forward.w3.weight", p + "ffn_up")]
    worst = 0.0
    for x_name, w_name, y_name in products:
        x = trace[x_name].reshape(-1, trace[x_name].shape[-1]).astype(np.float64)          # (N, in)
        y = trace[y_name].reshape(len(x), -1)                                                 # (N, out)
        exact_f16 = x @ np.asarray(f16.weights[w_name], np.float64).T
        bound = product_error_bound(x, int8.weights[w_name])
        slack = 1e-5 * np.abs(x) @ np.abs(np.asarray(int8.weights[w_name], np.float64)).T    # float32 arithmetic
        assert np.all(np.abs(y - exact_f16) <= bound + slack), w_name
        worst = max(worst, float(np.max(np.abs(y - exact_f16) / bound)))
    assert 0.01 < worst <= 1.0           # the bound holds, and the int8 rounding really is in the logits


def test_zero_rows_huge_outliers_and_float16_extremes_quantize_to_finite_correct_rows():
    tiny = np.float16(2.0 ** -24)                                   # the smallest float16 subnormal
    w = np.zeros((6, 40), np.float16)
    w[1] = 1e-3
    w[1, 7] = 6e4                                                   # one huge outlier
    w[2] = np.float16(65504)                                        # float16's largest
    w[2, ::2] = -np.float16(65504)
    w[3, 5] = tiny                                                  # a row of one subnormal
    w[4] = np.linspace(-1, 1, 40)
    w[5] = np.float16(2.0 ** -14) * np.arange(40)                   # around float16's smallest normal
    qw = quantize_rows(w)
    assert np.all(np.isfinite(qw.scale)) and qw.scale[0] == 0 and not qw.q[0].any()
    deq = dequantize(qw)
    assert np.all(np.isfinite(deq))
    half = qw.scale.astype(np.float64)[:, None] / 2
    assert np.all(np.abs(deq - w.astype(np.float64)) <= half * (1 + 1e-6))   # round to nearest, no clipping
    assert qw.q[1, 7] == 127 and not np.delete(qw.q[1], 7).any()    # the small weights are below half a step
    assert np.array_equal(np.abs(qw.q[2]), np.full(40, 127)) and qw.q[3, 5] == 127
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    y = linear_i8(x, qw.q, qw.scale)
    exact = qw.q * qw.scale.astype(np.float64)[:, None]                       # (6, 40)
    expected = x.astype(np.float64) @ exact.T
    float32_bound = (40 + 2) * 2.0 ** -24 * (np.abs(x) @ np.abs(exact).T)      # n_in + 2 roundings per output
    assert np.all(np.isfinite(y)) and np.all(np.abs(y - expected) <= float32_bound)
    assert rounding_error(w, qw)["max_in_half_steps"] <= 1.0


@pytest.mark.parametrize("n_rows", [1, 3, 20])          # decoding one token, a few, a prompt (GEMM path)
def test_int8_product_equals_float64_product_of_the_dequantized_matrix(n_rows):
    rng = np.random.default_rng(n_rows)
    qw = quantize_rows(rng.standard_normal((1000, 300)))                    # uneven blocks of rows
    x = rng.standard_normal((n_rows, 300)).astype(np.float32)
    expected = x.astype(np.float64) @ (qw.q * qw.scale.astype(np.float64)[:, None]).T
    got = matmul_t(x, qw)
    assert got.dtype == np.float32 and got.shape == (n_rows, 1000)
    assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) < 1e-6


def test_inf_or_nan_weights_and_malformed_rows_are_refused():
    for bad in (np.inf, np.nan):
        w = np.ones((4, 8), np.float32)
        w[2, 3] = bad
        with pytest.raises(LlamaNpError, match="'layers.0.attention.wq.weight' contains inf or nan"):
            quantize_rows(w, "layers.0.attention.wq.weight")
    with pytest.raises(LlamaNpError):
        Int8Rows(np.zeros((4, 8), np.int8), np.ones(3, np.float32))          # a scale per row, exactly
    with pytest.raises(LlamaNpError):
        Int8Rows(np.zeros((4, 8), np.int16), np.ones(4, np.float32))


def test_int8_embedding_rows_are_gathered_then_scaled(random_int8):
    """An int8 embedding table (written by another tool: ours keeps it float16) works too."""
    f16_dir, int8_dir = random_int8
    model = llama_np.load(int8_dir)
    table = np.asarray(model.weights["tok_embeddings.weight"], np.float32)
    weights = {**model.weights, "tok_embeddings.weight": quantize_rows(table)}
    tokens = np.array([[1, 5, 9, 5]])
    trace = {}
    Llama(model.config, weights).forward(tokens, trace=trace)
    expected = dequantize(weights["tok_embeddings.weight"])[tokens]
    np.testing.assert_array_equal(trace["tok_embeddings"], expected)


def test_int8_directory_loads_as_memory_maps_and_the_fp32_policy_leaves_it_int8(random_int8):
    _, int8_dir = random_int8
    for fp32 in ("on", "off", "auto"):
        w = llama_np.load(int8_dir, fp32=fp32).weights
        wq = w["layers.0.attention.wq.weight"]
        assert isinstance(wq, Int8Rows) and not wq.q.flags.writeable and not wq.q.flags.owndata
        assert w["layers.0.attention_norm.weight"].dtype == np.float32


# ---------------------------------------------------------------- stories260K accuracy
def teacher_forced(model, tokens):
    """log-probabilities (T-1, V) of each next token, float64."""
    logits = model.forward(tokens[:, :-1])[0].astype(np.float64)
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def test_stories260k_int8_nll_within_4_percent_and_kl_below_0_05(stories260k_path, tmp_path, capsys):
    """Teacher-forced over 256 tokens of the float16 model's own greedy output."""
    f16 = llama_np.load(convert(stories260k_path, tmp_path / "f16", progress=False))
    ids = [1] + f16.generate([1], max_new_tokens=256, temperature=0.0)
    tokens = np.array([ids[:257]])
    assert tokens.shape == (1, 257)
    ref = teacher_forced(f16, tokens)
    targets = tokens[0, 1:]
    nll16 = -ref[np.arange(256), targets].mean()
    for how, model_dir in (("convert --dtype int8", convert(stories260k_path, tmp_path / "c", progress=False,
                                                             weight_type="int8")),
                           ("quantize", quantize(tmp_path / "f16", tmp_path / "q", progress=False))):
        lp = teacher_forced(llama_np.load(model_dir), tokens)
        nll = -lp[np.arange(256), targets].mean()
        kl = np.sum(np.exp(ref) * (ref - lp), axis=1).mean()
        with capsys.disabled():
            print(f"\nstories260K {how}: NLL {nll:.4f} vs float16 {nll16:.4f} ({100 * (nll / nll16 - 1):+.2f}%), "
                  f"mean KL(float16 || int8) {kl:.4f}")
        assert nll <= 1.04 * nll16 and kl <= 0.05


# ---------------------------------------------------------------- the commands
def test_quantize_command_prints_sizes_and_every_command_runs_on_the_result(random_int8, tmp_path):
    f16_dir, _ = random_int8
    out = tmp_path / "q8"
    result = run_cli("quantize", f16_dir, out)
    assert result.returncode == 0, result.stderr
    line = result.stderr.strip().splitlines()[-1].rsplit("\r", 1)[-1]
    assert line.startswith(f"wrote {out} (int8): ") and " -> " in line, line
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    data = (out / "model.safetensors").read_bytes()
    shapes = expected_shapes(llama_np.load(f16_dir).config)
    int8_bytes = sum(s[0] * s[1] + 4 * s[0] if len(s) == 2 and n != "tok_embeddings.weight" else 2 * np.prod(s)
                     for n, s in shapes.items())    # a byte per int8 weight + a float32 per row; float16 the rest
    assert len(data) - 8 - int.from_bytes(data[:8], "little") == int8_bytes

    int8 = llama_np.load(out)
    as_fp32 = Llama(int8.config, {n: np.asarray(w, np.float32) for n, w in int8.weights.items()})  # plain BLAS
    expected = as_fp32.generate([1, 50, 60], max_new_tokens=12, temperature=0.0)
    assert int8.generate([1, 50, 60], max_new_tokens=12, temperature=0.0) == expected
    prompt = int8.tokenizer.decode([50, 60])
    r = run_cli("generate", out, "--prompt", prompt, "--prompt", "The cat", "--max-new-tokens", "6",
                "--temperature", "0")                                          # a batch of two
    assert r.returncode == 0 and r.stdout.count("===") == 2, r.stderr
    (tmp_path / "text.txt").write_text("Once upon a time there was a little model. " * 4)
    r = run_cli("perplexity", out, tmp_path / "text.txt", "--context", "32", "--stride", "16")
    assert r.returncode == 0 and "perplexity" in r.stdout.lower(), r.stderr
    r = run_cli("chat", out, "--max-new-tokens", "4", "--seed", "1", input="Hello there\n")
    assert r.returncode == 0, r.stderr
    r = run_cli("compare", out, "--tokens", "8")
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def no_leftovers(parent, name):
    return not any(p.name == name or p.name.startswith(f".{name}.partial") for p in parent.iterdir())


def test_quantize_refuses_int8_missing_partial_and_non_finite_inputs(random_int8, tmp_path):
    f16_dir, int8_dir = random_int8
    out = tmp_path / "out"
    assert_one_line_error(run_cli("quantize", int8_dir, out), "already int8")
    assert_one_line_error(run_cli("quantize", tmp_path / "nope", out), "nope")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(f16_dir / "config.json", partial / "config.json")         # no model.safetensors
    assert_one_line_error(run_cli("quantize", partial, out), "model.safetensors")
    data = (f16_dir / "model.safetensors").read_bytes()
    (partial / "model.safetensors").write_bytes(data[:len(data) // 2])     # truncated
    assert_one_line_error(run_cli("quantize", partial, out), "truncated")
    (partial / "model.safetensors").write_bytes(data)
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    at = 8 + header_len + header["layers.1.feed_forward.w2.weight"]["data_offsets"][0] + 10
    (partial / "model.safetensors").write_bytes(data[:at] + np.float16(np.inf).tobytes() + data[at + 2:])
    assert_one_line_error(run_cli("quantize", partial, out), "'layers.1.feed_forward.w2.weight' contains inf or nan")
    assert no_leftovers(tmp_path, "out")


def test_convert_dtype_int8_from_a_meta_checkpoint_and_its_bad_input(exact, tmp_path):
    src, *_ = exact
    result = run_cli("convert", src, tmp_path / "c8", "--dtype", "int8")
    assert result.returncode == 0, result.stderr
    assert " -> " in result.stderr and "(int8)" in result.stderr
    assert json.loads((tmp_path / "c8" / "config.json").read_text())["weight_type"] == "int8"
    assert_one_line_error(run_cli("convert", src, tmp_path / "c4", "--dtype", "int4"), "--dtype")
    assert no_leftovers(tmp_path, "c4")


def test_hostile_int8_files_are_one_line_errors(random_int8, tmp_path):
    _, int8_dir = random_int8
    data = (int8_dir / "model.safetensors").read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])

    def variant(name, config_change=None, header_change=None, scale_value=None):
        d = tmp_path / name
        shutil.copytree(int8_dir, d)
        if config_change:
            config = json.loads((d / "config.json").read_text())
            (d / "config.json").write_text(json.dumps({**config, **config_change}))
        if scale_value is not None:
            at = 8 + header_len + header["output.weight_scale"]["data_offsets"][0]
            (d / "model.safetensors").write_bytes(data[:at] + np.float32(scale_value).tobytes() + data[at + 4:])
        if header_change:
            h = {**header}
            header_change(h)
            raw = json.dumps(h, separators=(",", ":")).encode()
            raw += b" " * (header_len - len(raw))
            assert len(raw) == header_len
            (d / "model.safetensors").write_bytes(data[:8] + raw + data[8 + header_len:])
        return d

    def without_scale(d):                      # a valid safetensors file that lacks output.weight's scales
        tensors = safetensors.numpy.load_file(str(d / "model.safetensors"))
        del tensors["output.weight_scale"]
        safetensors.numpy.save_file(tensors, str(d / "model.safetensors"))
        return d

    cases = [(variant("wt", {"weight_type": "int4"}), "int4"),
             (variant("f16", {"weight_type": "float16"}), "does not say weight_type int8"),
             (variant("nan", scale_value=np.nan), "output.weight_scale"),
             (variant("neg", scale_value=-1.0), "output.weight_scale"),
             (without_scale(variant("noscale")), "output.weight_scale")]
    for model_dir, fragment in cases:
        assert_one_line_error(run_cli("generate", model_dir, "--prompt", "a", "--max-new-tokens", "1"), fragment)
