"""Tensor parallelism on this machine: what the sums cost, a real decode over 2 ranks, and the
model of scaling to 70B.

    flock /tmp/llama_np_bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_parallel.py [--update-readme]

1. The reductions. Ranks that compute nothing (NullRank: RankActor with the 7B shape's
   activations and no weights) run the package's own forward pass over Ray -- each way of summing:
   the compiled graph, actor calls, the driver -- so the time per token is all overhead: the
   embedding gather, 32 layers x 2 sums of (1, 1, 4096) float32 partial outputs, the logits gather.
2. A real decode: the TinyLlama-1.1B shape (random float16 weights from bench.py's cache) in one
   process and over 2 local ranks, fused float16 products.
3. The model: time per token = weight bytes per rank / node bandwidth + steps x per-step latency
   (steps = 2 x n_layers + 2), with the bandwidth and the latency measured here, for LLaMA 2 70B on
   8 and 16 nodes of this machine's kind, float16 and int8; beside distributed-llama's published
   70B figure.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import _cpu_name, blas_kernel, make_converted, memory_bandwidth

from llama_np.config import ModelArgs
from llama_np.spec import expected_shapes

LLAMA_7B = ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000, hidden_dim=11008)
LLAMA_70B = ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000, hidden_dim=28672)
# distributed-llama's README (b4rtaz/distributed-llama, measurements "tested on 0.1.0 version"):
# Llama 2 70B on 8 x Raspberry Pi 4B 8 GB, Q40 weights, Q80 buffer, Gigabit Ethernet switch.
DLLAMA_70B = {"ms": 4842.81, "inference_ms": 2121.94, "transfer_ms": 2719.62}
README_START, README_END = "<!-- parallel:start -->", "<!-- parallel:end -->"


# ---------------------------------------------------------------- 1. the reductions
def null_ranks(world_size: int, reductions: str):
    """The package's RayRanks over ranks that compute nothing (the 7B shape's activations)."""
    import ray

    from llama_np.parallel.ranks import RankInfo
    from llama_np.parallel.ray_backend import RankActor, RayRanks

    class NullRank(RankActor):
        """Every step returns zeros of its output's shape: (B, T, D/N), (B, T, D), (B, T, V/N)."""

        def open(self, rank_dir, rank, world_size, fp32):
            self.config, self.rank, self.world_size = LLAMA_7B, rank, world_size
            self.caches, self.step, self.h = {}, None, None
            self.info = RankInfo(rank, world_size, rank_dir, LLAMA_7B.to_dict(), "none", "", None)
            return {"info": self.info, "pid": os.getpid(), "node": "", "host": "", "node_id": ""}

        def new_cache(self, cache_id, batch_size, max_seq_len):
            pass

        def embed(self, tokens, start_pos, cache_id):
            return np.zeros((*tokens.shape, LLAMA_7B.dim // self.world_size), np.float32)

        def attention(self, i, h):
            return np.zeros_like(h)

        def feed_forward(self, i, h):
            return np.zeros_like(h)

        def logits(self, h):
            return np.zeros((*h.shape[:-1], LLAMA_7B.vocab_size // self.world_size), np.float32)

    remote = ray.remote(concurrency_groups={"health": 1})(NullRank)

    class NullRanks(RayRanks):
        def _start_actors(self, n):
            return [remote.options(num_cpus=0).remote() for _ in range(n)]

    return NullRanks([Path(f"null-{k}") for k in range(world_size)], world_size, None, "off", reductions, 5.0, 60.0)


def time_reductions(world_size: int, reductions: str, calls: int) -> dict:
    ranks = null_ranks(world_size, reductions)
    try:
        tokens = np.ones((1, 1), np.int64)
        for _ in range(10):
            ranks.forward(tokens, 0, 0)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            ranks.forward(tokens, 0, 0)
            times.append(time.perf_counter() - t0)
    finally:
        ranks.close()
    steps = 2 * LLAMA_7B.n_layers + 2
    per_token = float(np.median(times))
    return {"world_size": world_size, "reductions": reductions, "per_token_ms": per_token * 1e3,
            "per_step_us": per_token / steps * 1e6, "steps": steps}


# ---------------------------------------------------------------- 2. a real decode
def decode_seconds(model, prompt_len: int, new_tokens: int) -> float:
    """Median seconds of one decoded token (greedy ids fed back; prompt of random ids prefilled first)."""
    rng = np.random.default_rng(0)
    tokens = np.r_[1, rng.integers(3, model.config.vocab_size, prompt_len - 1)][None]
    cache = model.new_cache(1, prompt_len + new_tokens)
    logits = model.forward(tokens, 0, cache)
    times = []
    for pos in range(prompt_len, prompt_len + new_tokens):
        nxt = np.array([[int(np.argmax(logits[0, -1]))]])
        t0 = time.perf_counter()
        logits = model.forward(nxt, pos, cache)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def decode_bytes(args: ModelArgs, bytes_per_weight: float, world_size: int = 1) -> float:
    """Weight bytes one rank reads per decoded token: its share of every matrix but the embedding."""
    return sum(int(np.prod(s)) for n, s in expected_shapes(args).items()
               if len(s) == 2 and n != "tok_embeddings.weight") * bytes_per_weight / world_size


def real_decode(cache_dir: Path, new_tokens: int) -> dict:
    import llama_np
    from llama_np.checkpoints.convert import convert
    from llama_np.parallel import open_tensor_parallel

    single_dir = make_converted("TinyLlama-1.1B", cache_dir)
    tp_dir = cache_dir / "TinyLlama-1.1B-tp2"
    if not tp_dir.exists():
        convert(single_dir, tp_dir, tensor_parallel=2, progress=False)
    single = decode_seconds(llama_np.load(single_dir, fp32="off"), 16, new_tokens)
    with open_tensor_parallel(tp_dir, 2, fp32="off") as tp:
        args = tp.config
        over_two = decode_seconds(tp, 16, new_tokens)
    return {"args": args.to_dict(), "single_s": single, "two_ranks_s": over_two,
            "fp16_bytes": decode_bytes(args, 2)}


# ---------------------------------------------------------------- 3. the model
def kv_replication_bytes(args: ModelArgs, world_size: int, bytes_per_weight: float) -> float:
    """Extra weight bytes per rank when there are more ranks than kv heads: each rank must hold a
    whole kv head of wk and wv (1/KVH of them) instead of its 1/N share."""
    if world_size <= args.n_kv_heads:
        return 0.0
    kv_params = 2 * args.n_layers * args.n_kv_heads * args.head_dim * args.dim        # wk and wv
    return kv_params * (1 / args.n_kv_heads - 1 / world_size) * bytes_per_weight


def predictions(bandwidth: float, effective: float, step_s: float) -> list[dict]:
    """70B on 8 and 16 nodes: floor (node bandwidth) and at the rate our fused kernel reaches here."""
    rows = []
    steps = 2 * LLAMA_70B.n_layers + 2
    for dtype, bpw in (("float16", 2.0), ("int8", 1.0 + 4 / LLAMA_70B.dim)):       # int8 + a float32 scale per row
        for n in (8, 16):
            weights = decode_bytes(LLAMA_70B, bpw, n) + kv_replication_bytes(LLAMA_70B, n, bpw)
            reduce_s = steps * step_s
            rows.append({"dtype": dtype, "nodes": n, "gb_per_rank": weights / 1e9,
                         "replicated_kv_gb": kv_replication_bytes(LLAMA_70B, n, bpw) / 1e9,
                         "floor_s": weights / bandwidth + reduce_s,
                         "at_our_rate_s": weights / effective + reduce_s if dtype == "float16" else None,
                         "reduce_s": reduce_s})
    return rows


def table(meta: dict, reductions: list[dict], decode: dict, rows: list[dict]) -> str:
    r = {(x["world_size"], x["reductions"]): x for x in reductions}
    lines = ["**The sums** (7B shape: 32 layers × 2 all-reduces of a (1, 1, 4096) float32 partial output, plus "
             "the embedding and logits gathers = 66 steps per token; ranks that compute nothing, so all of it is "
             "overhead):", "",
             "| ranks (local) | how the parts are summed | per token ms | per step µs |", "| --- | --- | --- | --- |"]
    for (n, how), x in r.items():
        lines.append(f"| {n} | {how} | {x['per_token_ms']:.1f} | {x['per_step_us']:.0f} |")
    d = decode
    floor_single = d["fp16_bytes"] / meta["bandwidth"]
    step = r[2, "compiled"]["per_step_us"] * 1e-6
    tiny_steps = 2 * d["args"]["n_layers"] + 2
    predicted_two = floor_single + tiny_steps * step            # one memory bus: both ranks share it
    lines += ["", "**A real decode** (TinyLlama-1.1B shape, random float16 weights, fused float16 products, median "
              "of the decoded tokens):", "",
              "| | s/token | bandwidth floor s/token | measured ÷ floor |", "| --- | --- | --- | --- |",
              f"| 1 process | {d['single_s']:.3f} | {floor_single:.3f} | {d['single_s'] / floor_single:.2f}× |",
              f"| 2 local ranks (compiled graph) | {d['two_ranks_s']:.3f} | {predicted_two:.3f} (same bus + "
              f"{tiny_steps} steps) | {d['two_ranks_s'] / predicted_two:.2f}× |", "",
              "**The model, for LLaMA 2 70B** (t = weight bytes per rank ÷ node bandwidth + 162 steps × per-step "
              "latency; nodes of this machine's kind):", "",
              "| weights | nodes | GB read per rank per token | of which replicated kv heads | floor s/token "
              "| at our fused-float16 rate s/token |", "| --- | --- | --- | --- | --- | --- |"]
    for x in rows:
        ours = f"{x['at_our_rate_s']:.2f}" if x["at_our_rate_s"] is not None else "— (int8 kernel not measured here)"
        lines.append(f"| {x['dtype']} | {x['nodes']} | {x['gb_per_rank']:.2f} | {x['replicated_kv_gb']:.3f} "
                     f"| {x['floor_s']:.2f} | {ours} |")
    lines.append(f"| distributed-llama, published: Q40 weights, 8 × Raspberry Pi 4B, Gigabit Ethernet | 8 | | "
                 f"| {DLLAMA_70B['ms'] / 1e3:.2f} (of which {DLLAMA_70B['transfer_ms'] / 1e3:.2f} network transfer) | |")
    effective = meta["effective_bandwidth"]
    notes = [
        f"Machine: {meta['machine']}; {meta['cores']} cores; NumPy {meta['numpy']} ({meta['blas']}); Ray "
        f"{meta['ray']}. Date: {meta['date']}. Command: `{meta['command']}`.",
        f"Inputs measured here: node bandwidth {meta['bandwidth'] / 1e9:.1f} GB/s (median of 11 512 MB float32 "
        f"GEMVs); per-step latency {step * 1e6:.0f} µs (2 local ranks, compiled graph, row above); our fused "
        f"float16 kernel's rate {effective / 1e9:.1f} GB/s of float16 weights (TinyLlama, 1 process: the floor "
        f"column assumes a kernel at memory bandwidth, the last column the rate ours reaches on these 2 cores).",
        "The per-step latency here is Ray moving the parts through shared memory on one machine: a lower bound. "
        "Across machines every step also pays the network: each 100 µs of network latency per step adds 16 ms "
        "per 70B token (162 steps), and a step moves one (1, 1, 8192) float32 array (32 KB) per rank, so on "
        "Gigabit Ethernet (~125 MB/s) the transfers alone add ~0.26 ms per rank per step.",
        "16 nodes: LLaMA 2 70B has 8 kv heads, so 16 ranks cannot each own whole kv heads; each rank must hold "
        "(a copy of) the kv head its 4 query heads read -- 1/8 of wk and wv instead of 1/16 -- the 'replicated "
        "kv heads' column, ~2% more bytes per rank, plus a KV cache per rank that does not shrink past 8 ranks "
        "(1/8 of the cache each). llama_np refuses N > n_kv_heads, as Meta's layout does (70B: at most 8 ranks); "
        "the 16-node rows are the model's prediction of what replication would give.",
        f"Memory per rank on 8 nodes (all weights, embedding included): {meta['gb_70b_8'] / 1e9:.1f} GB in float16, "
        f"{meta['gb_70b_8'] / 2e9:.1f} GB in int8 (1 byte per weight plus a float32 scale per row), on machines of "
        f"24 GB.",
        f"Load average (1 min) when the run started and ended: {meta['load'][0]:.1f}, {meta['load'][1]:.1f} on 2 "
        f"cores: the machine is shared, and every number above moves with it.",
        f"distributed-llama figure: its README (b4rtaz/distributed-llama, tested on version 0.1.0), Llama 2 70B on "
        f"8 × Raspberry Pi 4B 8 GB, Q40 weights and Q80 buffer: {DLLAMA_70B['ms']:.2f} ms per token "
        f"(inference {DLLAMA_70B['inference_ms']:.2f} ms, network transfer {DLLAMA_70B['transfer_ms']:.2f} ms), "
        f"as published; not measured by us.",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def update_readme(text: str) -> None:
    readme = REPO / "README.md"
    content = readme.read_text()
    before, rest = content.split(README_START, 1)
    after = rest.split(README_END, 1)[1]
    readme.write_text(f"{before}{README_START}\n{text}{README_END}{after}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default="/work/bench-cache", type=Path)
    p.add_argument("--calls", type=int, default=100, help="timed forward passes per way of summing")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--update-readme", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results-parallel.md")
    a = p.parse_args(argv)

    import ray

    from llama_np.parallel.ray_backend import start_local_ray

    load_at_start = os.getloadavg()[0]
    bandwidth = memory_bandwidth()
    print(f"memory bandwidth {bandwidth / 1e9:.1f} GB/s", file=sys.stderr)
    start_local_ray()
    reductions = []
    for n, how in [(2, "compiled"), (2, "ranks"), (2, "driver"), (4, "compiled")]:
        reductions.append(time_reductions(n, how, a.calls))
        print(json.dumps(reductions[-1]), file=sys.stderr)
    decode = real_decode(a.cache_dir, a.new_tokens)
    print(json.dumps(decode), file=sys.stderr)
    effective = decode["fp16_bytes"] / decode["single_s"]
    step = next(x for x in reductions if x["world_size"] == 2 and x["reductions"] == "compiled")["per_step_us"] * 1e-6
    meta = {"machine": f"{platform.machine()} {_cpu_name()}, "
                       f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
            "cores": len(os.sched_getaffinity(0)), "numpy": np.__version__, "blas": blas_kernel(), "ray": ray.__version__,
            "date": datetime.date.today().isoformat(), "bandwidth": bandwidth, "effective_bandwidth": effective,
            "load": [load_at_start, os.getloadavg()[0]],
            "gb_70b_8": sum(int(np.prod(s)) for s in expected_shapes(LLAMA_70B).values()) * 2 / 8,
            "command": "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_parallel.py "
                       + " ".join(sys.argv[1:])}
    rows = predictions(bandwidth, effective, step)
    text = table(meta, reductions, decode, rows)
    print(text)
    a.out.write_text(text)
    a.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "reductions": reductions, "decode": decode,
                                                       "predictions": rows}, indent=1))
    if a.update_readme:
        update_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
