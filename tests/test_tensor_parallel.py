"""Tensor parallelism (issue 11): rank directories cut the way Meta's shards are, and N Ray actors
whose forward pass gives the single-process logits.

References, none computed by the code under test:
  * torch: Meta's shards as torch.save wrote them (read back with torch.load), torch.chunk's pieces
    of the whole tensors (Meta's fairscale split, tests/reference.META_SPLIT), transformers' logits;
  * safetensors' own reader for what we wrote;
  * the single-process model (itself proven against transformers in test_meta_vs_pytorch.py).
The Ray tests share one local Ray instance (conftest.local_ray).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import llama_np
from conftest import REPO, assert_one_line_error, rendered_lines, run_cli
from llama_np.checkpoints.convert import convert
from llama_np.config import ModelArgs
from llama_np.errors import LlamaNpError
from llama_np.spec import expected_shapes
from reference import (_split_axis, hf_llama, hf_logits, random_hf_llama, random_meta_weights, rel_err,
                       write_meta_checkpoint)
from test_meta_vs_pytorch import train_tokenizer

TOL = 1e-5                       # the bound: N ranks against the single-process forward
# GQA: 8 query heads, 4 kv heads; hidden_dim by hand: int(2*4*64/3) = 170; int(1.3*170) = 221 -> 224
GQA_PARAMS = {"dim": 64, "multiple_of": 32, "ffn_dim_multiplier": 1.3, "n_heads": 8, "n_kv_heads": 4,
              "n_layers": 2, "norm_eps": 1e-5, "vocab_size": -1}
GQA_HIDDEN = 224
# MHA: a Hugging Face checkpoint, 4 heads of 12, rope_theta 500000
MHA_CONFIG = dict(hidden_size=48, intermediate_size=136, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=500000.0,
                  tie_word_embeddings=False)


class Built:
    def __init__(self, src, single, tp, weights=None):
        self.src, self.single_dir, self.tp, self.weights = src, single, tp, weights
        self.single = llama_np.load(single)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Built]:
    """The GQA Meta checkpoint (2 shards) and the MHA HF checkpoint, converted for 1 process and for
    2 and 4 ranks (GQA also 1 rank)."""
    root = tmp_path_factory.mktemp("tp")
    vocab = train_tokenizer(root / "tokenizer.model")
    gqa_weights = random_meta_weights(64, 2, 8, 4, vocab, GQA_HIDDEN, seed=11)
    gqa = write_meta_checkpoint(root / "gqa", GQA_PARAMS, gqa_weights, n_shards=2)
    shutil.copy(root / "tokenizer.model", gqa / "tokenizer.model")
    mha = root / "mha"
    random_hf_llama(seed=12, vocab_size=vocab, **MHA_CONFIG).save_pretrained(mha)
    shutil.copy(root / "tokenizer.model", mha / "tokenizer.model")
    out = {}
    for name, src, world_sizes, weights in [("gqa", gqa, (1, 2, 4), gqa_weights), ("mha", mha, (2, 4), None)]:
        single = convert(src, root / f"{name}-np", progress=False)
        tp = {n: convert(src, root / f"{name}-tp{n}", tensor_parallel=n, progress=False) for n in world_sizes}
        out[name] = Built(src, single, tp, weights)
    return out


def rank_tensors(tp_dir: Path, k: int, n: int) -> dict[str, np.ndarray]:
    """Rank k's tensors as safetensors' own reader sees them."""
    return load_file(str(tp_dir / f"rank-{k:02d}-of-{n:02d}" / "model.safetensors"))


# ------------------------------------------------------------------------------- rank directories
def test_meta_shards_become_the_ranks_byte_for_byte(built):
    """13B -> 2 ranks, 70B -> 8: shard k is rank k with no merge; every tensor's bytes are the
    shard's as torch rounds them to float16 (our format is float16; Meta ships bfloat16)."""
    b = built["gqa"]
    for k in range(2):
        shard = torch.load(b.src / f"consolidated.{k:02d}.pth", map_location="cpu", weights_only=True)
        ours = rank_tensors(b.tp[2], k, 2)
        assert set(ours) == set(shard) - {"rope.freqs"}
        for name, t in ours.items():
            assert t.dtype == np.float16 and t.tobytes() == shard[name].to(torch.float16).numpy().tobytes(), name


def test_float16_meta_shards_are_copied_exactly(tmp_path):
    """A Meta checkpoint saved in float16: the rank files hold the very bytes of the shards."""
    params = {"dim": 32, "multiple_of": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 1, "norm_eps": 1e-5,
              "vocab_size": 40}
    src = write_meta_checkpoint(tmp_path / "src", params, random_meta_weights(32, 1, 4, 2, 40, 96, seed=4,
                                                                              dtype=torch.float16), n_shards=2)
    out = convert(src, tmp_path / "out", tensor_parallel=2, progress=False)
    for k in range(2):
        shard = torch.load(src / f"consolidated.{k:02d}.pth", map_location="cpu", weights_only=True)
        for name, t in rank_tensors(out, k, 2).items():
            assert t.tobytes() == shard[name].numpy().tobytes(), name


@pytest.mark.parametrize("kind,n", [("gqa", 4), ("mha", 2), ("mha", 4)])
def test_other_splits_are_torch_chunks_of_the_whole_tensors(built, kind, n):
    """Meta's 2 shards into 4 ranks, an HF checkpoint into 2 or 4: rank k holds torch.chunk(w, n, axis)[k]
    of the single-process model's tensor, along fairscale's axis for it (norms whole)."""
    b = built[kind]
    whole = load_file(str(b.single_dir / "model.safetensors"))
    for k in range(n):
        ours = rank_tensors(b.tp[n], k, n)
        assert set(ours) == set(whole)
        for name, w in whole.items():
            axis = _split_axis(name)
            expected = w if axis is None else torch.chunk(torch.from_numpy(w), n, dim=axis)[k].numpy()
            np.testing.assert_array_equal(ours[name], expected, err_msg=f"rank {k} {name}")


def test_rank_config_holds_the_whole_model_and_its_rank(built):
    import json

    b = built["gqa"]
    for k in range(4):
        config = json.loads((b.tp[4] / f"rank-{k:02d}-of-04" / "config.json").read_text())
        assert config["tensor_parallel"] == {"rank": k, "world_size": 4}
        assert (config["n_heads"], config["n_kv_heads"], config["hidden_dim"]) == (8, 4, GQA_HIDDEN)
        assert (b.tp[4] / f"rank-{k:02d}-of-04" / "tokenizer.model").read_bytes() == \
            (b.src / "tokenizer.model").read_bytes()


def test_int8_directory_splits_with_scales_following_their_rows(tmp_path):
    """An int8 directory (X.weight int8 rows, X.weight_scale one float32 per row, written here with
    safetensors' own writer): matrices cut like float16 ones; a scale is cut with its rows when its
    matrix is cut along rows, and replicated when the matrix is cut along columns."""
    import json

    args = ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=64)
    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in expected_shapes(args).items():
        if len(shape) == 2:
            tensors[name] = rng.integers(-127, 128, shape, dtype=np.int8)
            tensors[name + "_scale"] = rng.random(shape[0], dtype=np.float32)
        else:
            tensors[name] = (1 + rng.random(shape)).astype(np.float16)
    src = tmp_path / "int8"
    src.mkdir()
    save_file(tensors, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({**args.to_dict(), "weight_type": "int8"}))
    out = run_cli("convert", src, tmp_path / "out", "--tensor-parallel", "2")
    assert out.returncode == 0, out.stderr
    for k in range(2):
        ours = rank_tensors(tmp_path / "out", k, 2)
        config = json.loads((tmp_path / "out" / f"rank-{k:02d}-of-02" / "config.json").read_text())
        assert config["weight_type"] == "int8" and set(ours) == set(tensors)
        for name, t in tensors.items():
            assert ours[name].dtype == t.dtype, name
        def rows(a, k=k):
            return a[k * len(a) // 2:(k + 1) * len(a) // 2]
        for m in ["layers.0.attention.wq.weight", "layers.0.feed_forward.w1.weight", "output.weight"]:
            np.testing.assert_array_equal(ours[m], rows(tensors[m]))
            np.testing.assert_array_equal(ours[m + "_scale"], rows(tensors[m + "_scale"]))
        for m in ["layers.0.attention.wo.weight", "layers.0.feed_forward.w2.weight", "tok_embeddings.weight"]:
            np.testing.assert_array_equal(ours[m], rows(tensors[m].T).T)
            np.testing.assert_array_equal(ours[m + "_scale"], tensors[m + "_scale"])


# ------------------------------------------------------------------------------- the forward pass
@pytest.fixture(scope="module")
def tp(local_ray, built):
    """tp(kind, n, reductions="compiled") -> the model over n Ray actors (opened once, closed at the end)."""
    from llama_np.parallel.ray_backend import open_ray

    opened = {}

    def get(kind, n, reductions="compiled"):
        if (kind, n, reductions) not in opened:
            opened[kind, n, reductions] = open_ray(built[kind].tp[n], n, reductions=reductions)
        return opened[kind, n, reductions]
    yield get
    for model in opened.values():
        model.close()


def prompts(vocab, B=2, T=12, seed=0):
    rng = np.random.default_rng(seed)
    return np.c_[np.ones((B, 1), np.int64), rng.integers(3, vocab, (B, T - 1))]


@pytest.mark.parametrize("kind", ["gqa", "mha"])
@pytest.mark.parametrize("n", [2, 4])
def test_logits_of_n_ranks_equal_the_single_process_forward(built, tp, kind, n):
    model, single = tp(kind, n), built[kind].single
    tokens = prompts(single.config.vocab_size)
    ours = model.forward(tokens)
    assert ours.dtype == np.float32 and ours.shape == (2, 12, single.config.vocab_size)
    assert rel_err(ours, single.forward(tokens)) < TOL


@pytest.mark.parametrize("kind", ["gqa", "mha"])
@pytest.mark.parametrize("n", [2, 4])
def test_cached_decoding_over_ranks_equals_recomputation(built, tp, kind, n):
    """Prefill 5 positions, then one token per call through the ranks' slices of the KV cache."""
    model, single = tp(kind, n), built[kind].single
    tokens = prompts(single.config.vocab_size, T=14, seed=1)
    cache = model.new_cache(batch_size=2, max_seq_len=14)
    got = [model.forward(tokens[:, :5], 0, cache)] + [model.forward(tokens[:, p:p + 1], p, cache) for p in range(5, 14)]
    got = np.concatenate(got, axis=1)
    assert rel_err(got, model.forward(tokens)) < TOL
    assert rel_err(got, single.forward(tokens)) < TOL


@pytest.mark.parametrize("kind", ["gqa", "mha"])
def test_greedy_generation_gives_the_single_process_ids(built, tp, kind):
    model, single = tp(kind, 4), built[kind].single
    for prompt in ([1, 17, 42, 99], [1, 5]):
        assert model.generate(prompt, max_new_tokens=16, temperature=0) == \
            single.generate(prompt, max_new_tokens=16, temperature=0)
    text = "Once upon a time"
    assert model.generate(text, max_new_tokens=10, temperature=0.8, seed=3) == \
        single.generate(text, max_new_tokens=10, temperature=0.8, seed=3)


def test_generation_chat_and_perplexity_run_unchanged_on_the_ranks(built, tp):
    model, single = tp("gqa", 2), built["gqa"].single
    prompts_ = ["The quick brown fox", "Translate English to French:"]
    assert llama_np.text_completion(model, prompts_, max_new_tokens=6, temperature=0) == \
        llama_np.text_completion(single, prompts_, max_new_tokens=6, temperature=0)
    dialog = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert model.chat(dialog, max_new_tokens=6, temperature=0) == single.chat(dialog, max_new_tokens=6, temperature=0)
    text = "sea otter => loutre de mer; peppermint => menthe poivree; plush giraffe => girafe en peluche"
    ppl = llama_np.perplexity(model, text, context=16, stride=8)
    assert abs(ppl - llama_np.perplexity(single, text, context=16, stride=8)) / ppl < TOL


def test_ranks_match_transformers(built, tp):
    """The independent reference: transformers' LlamaForCausalLM on the same (float16-rounded) weights."""
    b = built["gqa"]
    c = b.single.config
    ref = hf_llama(b.weights, dim=c.dim, n_layers=c.n_layers, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
                   vocab_size=c.vocab_size, hidden_dim=c.hidden_dim)
    tokens = prompts(c.vocab_size, seed=2)
    assert rel_err(tp("gqa", 4).forward(tokens), hf_logits(ref, tokens)) < 1e-4


def test_one_rank_is_the_single_process_model_to_the_bit(built, tp):
    """N = 1 runs model.py's own functions on the whole weights: not a second copy of the math."""
    tokens = prompts(built["gqa"].single.config.vocab_size, seed=3)
    np.testing.assert_array_equal(tp("gqa", 1).forward(tokens), built["gqa"].single.forward(tokens))


def test_sums_through_the_driver_or_between_ranks_give_the_same_bits(built, tp):
    """Every way of summing adds the same parts in rank order: compiled graph == actor calls == driver."""
    tokens = prompts(built["gqa"].single.config.vocab_size, seed=4)
    compiled = tp("gqa", 2).forward(tokens)
    for reductions in ("ranks", "driver"):
        np.testing.assert_array_equal(tp("gqa", 2, reductions).forward(tokens), compiled, err_msg=reductions)


def test_in_process_ranks_give_the_same_bits_as_ray(built, tp):
    from llama_np.parallel.llama import open_in_process

    tokens = prompts(built["mha"].single.config.vocab_size, seed=5)
    np.testing.assert_array_equal(open_in_process(built["mha"].tp[4], 4).forward(tokens),
                                  tp("mha", 4).forward(tokens))


def test_a_cache_from_another_model_is_refused(built, tp):
    with pytest.raises(LlamaNpError, match="new_cache"):
        tp("gqa", 2).forward(np.array([[1, 2]]), 0, built["gqa"].single.new_cache(1, 8))


# ------------------------------------------------------------------------------- faults
def run_until_error(model, seconds=60):
    """Decode one token per call until the model fails (or `seconds` pass) -> (error, elapsed)."""
    cache = model.new_cache(1, model.config.max_seq_len)
    t0 = time.perf_counter()
    with pytest.raises(LlamaNpError) as e:
        for pos in range(model.config.max_seq_len):
            model.forward(np.array([[5]]), pos, cache)
            assert time.perf_counter() - t0 < seconds, "no error"
    return str(e.value), time.perf_counter() - t0


def test_a_killed_rank_ends_generation_with_one_line_naming_it(local_ray, built):
    from llama_np.parallel.ray_backend import open_ray

    model = open_ray(built["mha"].tp[2], 2)
    pid = model.ranks.nodes[1]["pid"]
    threading.Timer(0.5, lambda: local_ray.kill(model.ranks.actors[1])).start()
    message, elapsed = run_until_error(model)
    assert "\n" not in message and f"rank 1 of 2 (pid {pid} " in message and "died" in message, message
    assert elapsed < 30
    with pytest.raises(LlamaNpError, match="rank 1 of 2"):                # and it stays failed
        model.forward(np.array([[1]]))


def test_a_rank_that_stops_answering_is_named_within_the_health_timeout(local_ray, built):
    from llama_np.parallel.ray_backend import open_ray

    model = open_ray(built["mha"].tp[2], 2, health_interval=0.5, health_timeout=2)
    pid = model.ranks.nodes[0]["pid"]
    threading.Timer(0.5, lambda: os.kill(pid, signal.SIGSTOP)).start()
    try:
        message, elapsed = run_until_error(model)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert f"rank 0 of 2 (pid {pid} " in message and "stopped answering" in message, message
    assert elapsed < 30


# ------------------------------------------------------------------------------- the command line
def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_cli_rank_killed_mid_perplexity_gives_one_line_error(built, tmp_path):
    """SIGKILL one rank's process while `llama-np perplexity --tensor-parallel 2` runs: exit 2 and one
    line naming that rank (by its pid), well within a bounded time."""
    text = tmp_path / "long.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 400)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "llama_np", "perplexity", str(built["gqa"].tp[2]), str(text),
                             "--tensor-parallel", "2", "--context", "64", "--stride", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    stderr = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 120
        while "perplexity" not in "".join(stderr) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)                                        # until the progress bar shows: work under way
        ranks = [p for p in _descendants(proc.pid) if b"RankActor" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(ranks) == 2, "".join(stderr)
        victim = ranks[-1]
        os.kill(victim, signal.SIGKILL)
        t0 = time.time()
        proc.wait(timeout=60)
        elapsed = time.time() - t0
        result_stdout = proc.stdout.read()
    finally:
        proc.kill()
    reader.join(5)
    text = "".join(stderr)
    lines = rendered_lines(text)                            # the progress bar as it stopped, then the error
    assert proc.returncode == 2 and "Traceback" not in text, text
    assert result_stdout == "", result_stdout               # nothing of Ray's (it reports dead workers on stdout)
    assert lines[-1].startswith("error: ") and all(line.startswith("perplexity") for line in lines[:-1]), text
    assert re.search(rf"rank [01] of 2 \(pid {victim} .*\) died", lines[-1]), lines[-1]
    assert elapsed < 30


CLUSTER = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.read()
cluster.shutdown()
"""
ON_THE_CLUSTER = """
import sys, numpy as np, llama_np
from llama_np.parallel import open_tensor_parallel
model = open_tensor_parallel(sys.argv[1], 2, address=sys.argv[2])
tokens = np.array([[1, 5, 9, 200, 31]])
single = llama_np.load(sys.argv[3]).forward(tokens)
rel = np.abs(model.forward(tokens) - single).max() / np.abs(single).max()
print(len({node["node_id"] for node in model.ranks.nodes}), rel)
"""


def test_a_cluster_gets_one_rank_per_node(built, tmp_path):
    """A two-node Ray cluster on this machine (ray.cluster_utils; the nodes share the disk): `--ray ADDRESS`
    places the 2 ranks on 2 nodes, computes the single-process logits, and `llama-np generate` prints the
    single-process text and nothing else; 4 ranks need 4 nodes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    try:
        address = cluster.stdout.readline().strip()
        b = built["gqa"]
        run = subprocess.run([sys.executable, "-c", ON_THE_CLUSTER, str(b.tp[2]), address, str(b.single_dir)],
                             capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        assert run.returncode == 0, run.stderr
        nodes, rel = run.stdout.split()
        assert int(nodes) == 2 and float(rel) < TOL, run.stdout
        flags = ["--prompt", "Once upon a time", "--max-new-tokens", "12", "--temperature", "0"]
        single = run_cli("generate", b.single_dir, *flags)
        ranks = run_cli("generate", b.tp[2], "--tensor-parallel", "2", "--ray", address, *flags)
        assert single.returncode == 0 and ranks.returncode == 0, ranks.stderr
        assert ranks.stdout == single.stdout and ranks.stdout.strip()
        lines = rendered_lines(ranks.stderr)                # our stats line only: Ray says nothing
        assert len(lines) == 1 and lines[0].startswith("[") and "prompt tokens" in lines[0], ranks.stderr
        too_many = run_cli("generate", b.tp[4], "--tensor-parallel", "4", "--ray", address, "--prompt", "Hi")
        assert_one_line_error(too_many, f"the Ray cluster at {address} has 2 node(s)", "4 ranks need 4 nodes")
    finally:
        cluster.stdin.close()
        cluster.wait(60)


@pytest.fixture(scope="module")
def gqa_tp2(built):
    return built["gqa"].tp[2]


def test_cli_convert_refuses_n_that_does_not_divide_the_heads(built, tmp_path):
    src = built["gqa"].src                                              # 8 heads, 4 kv heads, hidden 224
    assert_one_line_error(run_cli("convert", src, tmp_path / "o3", "--tensor-parallel", "3"), "n_heads = 8")
    assert_one_line_error(run_cli("convert", src, tmp_path / "o8", "--tensor-parallel", "8"), "n_kv_heads = 4")
    assert_one_line_error(run_cli("convert", src, tmp_path / "o0", "--tensor-parallel", "0"), "positive")
    assert not any(tmp_path.iterdir())                                  # nothing written, not even a temp dir


def test_cli_convert_refuses_n_that_does_not_divide_hidden_dim(tmp_path):
    params = {"dim": 32, "multiple_of": 2, "n_heads": 4, "n_kv_heads": 4, "n_layers": 1, "norm_eps": 1e-5,
              "vocab_size": 40}                                         # hidden_dim = 86: 2 divides it, 4 does not
    src = write_meta_checkpoint(tmp_path / "src", params, random_meta_weights(32, 1, 4, 4, 40, 86, seed=1))
    assert_one_line_error(run_cli("convert", src, tmp_path / "out", "--tensor-parallel", "4"), "hidden_dim = 86")
    assert not (tmp_path / "out").exists()


def test_cli_convert_leaves_nothing_behind_when_a_tensor_fails_midway(built, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(built["gqa"].src, src)
    bad = torch.load(src / "consolidated.01.pth", weights_only=True)
    bad["layers.1.feed_forward.w2.weight"][0, 0] = float("inf")             # found only when that tensor is read
    torch.save(bad, src / "consolidated.01.pth")
    for n in ("2", "4"):                                                    # the shard-per-rank path and the split
        assert_one_line_error(run_cli_raw("convert", src, tmp_path / "out", "--tensor-parallel", n), "inf or nan")
        assert [p.name for p in tmp_path.iterdir()] == ["src"]


def run_cli_raw(*args):
    """run_cli, keeping the carriage returns a progress bar clears itself with (text mode would turn
    them into line breaks): stderr as a terminal would show it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "llama_np", *map(str, args)], capture_output=True, env=env, cwd=REPO,
                       timeout=300)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def test_cli_missing_rank_directory(gqa_tp2, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(gqa_tp2, model)
    shutil.rmtree(model / "rank-01-of-02")
    assert_one_line_error(run_cli("generate", model, "--tensor-parallel", "2", "--prompt", "Hi"),
                          "rank-01-of-02: missing (rank 1 of 2)")


def test_cli_ranks_from_different_models(built, gqa_tp2, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(gqa_tp2, model)
    norms = load_file(str(model / "rank-01-of-02" / "model.safetensors"))
    norms["norm.weight"] = norms["norm.weight"] * np.float16(2)            # rank 1 from another model
    save_file(norms, str(model / "rank-01-of-02" / "model.safetensors"))
    assert_one_line_error(run_cli("generate", model, "--tensor-parallel", "2", "--prompt", "Hi"),
                          "rank 1", "different models")
    shutil.rmtree(model / "rank-01-of-02")                                  # a rank of another shape
    shutil.copytree(built["mha"].tp[2] / "rank-01-of-02", model / "rank-01-of-02")
    assert_one_line_error(run_cli("generate", model, "--tensor-parallel", "2", "--prompt", "Hi"),
                          "rank 1", "different models")


def test_cli_wrong_number_of_ranks_and_plain_directories(built, gqa_tp2):
    assert_one_line_error(run_cli("generate", gqa_tp2, "--tensor-parallel", "4", "--prompt", "Hi"),
                          "made for 2 ranks")
    assert_one_line_error(run_cli("generate", built["gqa"].single_dir, "--tensor-parallel", "2", "--prompt", "Hi"),
                          "single-process model directory", "--tensor-parallel 2")
    assert_one_line_error(run_cli("generate", gqa_tp2 / "rank-00-of-02", "--prompt", "Hi"),
                          "one rank of a tensor-parallel model")
    assert_one_line_error(run_cli("generate", gqa_tp2, "--ray", "127.0.0.1:6379", "--prompt", "Hi"),
                          "--ray needs --tensor-parallel")
    assert_one_line_error(run_cli("generate", gqa_tp2, "--tensor-parallel", "0", "--prompt", "Hi"), "positive")


@pytest.mark.parametrize("address,fragment", [("127.0.0.1:1", "cannot reach the Ray cluster at 127.0.0.1:1"),
                                              ("nonsense", "HOST:PORT")])
def test_cli_cluster_that_cannot_be_reached(gqa_tp2, address, fragment):
    result = run_cli("perplexity", gqa_tp2, __file__, "--tensor-parallel", "2", "--ray", address, timeout=60)
    assert_one_line_error(result, fragment)


def test_cli_without_ray_says_how_to_install_it(gqa_tp2, tmp_path):
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(fake.parent)])}
    result = subprocess.run([sys.executable, "-m", "llama_np", "generate", str(gqa_tp2), "--tensor-parallel", "2",
                             "--prompt", "Hi"], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert_one_line_error(result, 'pip install "llama_np[ray]"')
