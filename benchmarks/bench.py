"""llama_np against PyTorch (transformers), side by side, on the same random weights and prompt.

    python benchmarks/bench.py                       # stories15M, stories110M, TinyLlama-1.1B shapes
    python benchmarks/bench.py --with-7b             # + LLaMA-2-7B (13.5 GB; written once, with its
                                                     #   Meta-format source and timed conversions)
    python benchmarks/bench.py --update-readme       # put the table into README.md

Every shape runs llama_np twice, on the float16 directory and on its int8 copy (`llama-np
quantize`, written once, timed), beside PyTorch fp32 and bf16.
For every shape, each side runs in its own subprocess (so peak RSS is per side) and reports:
prefill tokens/s (one forward over a 128-token prompt), decode tokens/s (128 greedy tokens, one
token per forward through the KV cache), load time to first logits, and peak RSS. The parent also
measures the machine's memory bandwidth (a 512 MB float32 matrix-vector product) and prints the
floor of decoding: the bytes of weights one decoded token must read / that bandwidth.

Model files live in --cache-dir (default /work/bench-cache), outside the repository; they are
random weights in llama_np's converted format, written once and reused.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {  # name: (dim, n_layers, n_heads, n_kv_heads, hidden_dim, vocab_size)
    "stories15M": (288, 6, 6, 6, 768, 32000),
    "stories110M": (768, 12, 12, 12, 2048, 32000),
    "TinyLlama-1.1B": (2048, 22, 32, 4, 5632, 32000),
    "LLaMA-2-7B": (4096, 32, 32, 32, 11008, 32000),
}
BIG = "LLaMA-2-7B"


def model_args(shape: str, max_seq_len: int = 2048):
    from llama_np.config import ModelArgs

    dim, n_layers, n_heads, n_kv_heads, hidden_dim, vocab_size = SHAPES[shape]
    return ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                     hidden_dim=hidden_dim, vocab_size=vocab_size, max_seq_len=max_seq_len)


def random_tensor(rng, shape):
    """Weights ~ N(0, 1/in_features) (norm weights ~1), generated in float32 row chunks."""
    if len(shape) == 1:
        return lambda: (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    def load():
        out = np.empty(shape, np.float16)
        step = max(1, (1 << 24) // shape[1])
        for r in range(0, shape[0], step):
            block = rng.standard_normal((min(step, shape[0] - r), shape[1]), dtype=np.float32)
            out[r:r + step] = block * np.float32(1.0 / np.sqrt(shape[1]))
        return out
    return load


def make_converted(shape: str, cache_dir: Path) -> Path:
    """A converted model directory with random float16 weights for `shape` (written once)."""
    from llama_np.spec import expected_shapes
    from llama_np.weights import write_model_dir

    out = cache_dir / f"{shape}-np"
    if (out / "config.json").exists():
        return out
    print(f"writing random {shape} weights to {out}", file=sys.stderr)
    args = model_args(shape)
    rng = np.random.default_rng(0)
    tensors = [(n, random_tensor(rng, s)) for n, s in expected_shapes(args).items()]
    return write_model_dir(out, args, tensors, {"format": "bench", "random_weights": True}, None, True)


# ---------------------------------------------------------------- the 7B Meta-format source
def write_meta(out: Path, shape: str = BIG) -> Path:
    """params.json + consolidated.00.pth in Meta's format (random bfloat16), without torch.save.

    A .pth is a stored zip: archive/data.pkl (the state dict, tensors as persistent storage ids)
    and archive/data/<key> (raw little-endian storages). We stream each storage into the zip
    in chunks, so writing 13.5 GB takes a few hundred MB of RAM.
    """
    import io
    import pickle
    import zipfile
    from collections import OrderedDict

    import torch  # only for the two names the pickle refers to; no tensor is made with it

    from llama_np.spec import expected_shapes

    if (out / "consolidated.00.pth").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    dim, n_layers, n_heads, n_kv_heads, hidden_dim, vocab_size = SHAPES[shape]
    multiple_of = 256 if hidden_dim % 256 == 0 else 32
    (out / "params.json").write_text(json.dumps({"dim": dim, "multiple_of": multiple_of, "n_heads": n_heads,
                                                 "n_kv_heads": n_kv_heads, "n_layers": n_layers,
                                                 "norm_eps": 1e-5, "vocab_size": vocab_size}))
    shapes = expected_shapes(model_args(shape))

    class Tensor:                                   # what the pickle will call _rebuild_tensor_v2 on
        def __init__(self, key, shape):
            self.key, self.shape = key, shape

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and obj and obj[0] == "__storage__":
                return ("storage", torch.BFloat16Storage, obj[1], "cpu", obj[2])
            return None

        def reducer_override(self, obj):
            if isinstance(obj, Tensor):
                n = int(np.prod(obj.shape))
                stride = tuple(int(np.prod(obj.shape[i + 1:])) for i in range(len(obj.shape)))
                return (torch._utils._rebuild_tensor_v2,
                        (("__storage__", obj.key, n), 0, obj.shape, stride, False, OrderedDict()))
            return NotImplemented

    state = OrderedDict((name, Tensor(str(i), shape)) for i, (name, shape) in enumerate(shapes.items()))
    pkl = io.BytesIO()
    Pickler(pkl, protocol=2).dump(state)
    rng = np.random.default_rng(7)
    tmp = out / "consolidated.00.pth.partial"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        z.writestr("consolidated/data.pkl", pkl.getvalue())
        z.writestr("consolidated/byteorder", "little")
        z.writestr("consolidated/version", "3\n")
        for i, (name, shape) in enumerate(shapes.items()):
            if i % 10 == 0:
                print(f"writing {out.name}: tensor {i + 1}/{len(shapes)}", file=sys.stderr, flush=True)
            with z.open(f"consolidated/data/{i}", "w", force_zip64=True) as f:
                rows = shape[0] if len(shape) == 2 else 1
                cols = shape[-1]
                step = max(1, (1 << 23) // cols)
                for r in range(0, rows, step):
                    n = min(step, rows - r)
                    x = rng.standard_normal((n, cols), dtype=np.float32)
                    x = x * np.float32(1.0 / np.sqrt(cols)) if len(shape) == 2 else 1 + 0.1 * x
                    f.write((x.view(np.uint32) >> 16).astype("<u2").tobytes())   # bfloat16 = top 16 bits
    os.replace(tmp, out / "consolidated.00.pth")
    return out


# ---------------------------------------------------------------- workers (one subprocess each)
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))


def peak_rss_gib() -> float:
    """VmHWM: this process's peak resident set (anonymous + file-backed pages it mapped).
    (ru_maxrss would do, but Linux carries it over from the parent across fork + exec.)"""
    return _status_kib("VmHWM") / 2**20


def prompt_tokens(vocab_size: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.r_[1, rng.integers(3, vocab_size, n - 1)][None]                # (1, n)


def touch_pages(weights: dict) -> None:
    """Read one value per 4 KiB page of every weight array (the kernel maps the file in)."""
    from llama_np.quantize import Int8Rows

    for w in weights.values():
        for part in (w.q, w.scale) if isinstance(w, Int8Rows) else (w,):
            flat = part.reshape(-1)
            float(flat[:: max(1, 4096 // flat.itemsize)].sum())


def weights_kind(weights: dict) -> str:
    """What the matrices compute with: "int8 rows", "fp32 copies" or "fp16 fused"."""
    from llama_np.quantize import Int8Rows

    matrices = [w for n, w in weights.items() if w.ndim == 2 and n != "tok_embeddings.weight"]
    if any(isinstance(w, Int8Rows) for w in matrices):
        return "int8 rows"
    return "fp32 copies" if any(w.dtype == np.float32 for w in matrices) else "fp16 fused"


def unused_hook_cost(n_layers: int) -> float:
    """Seconds per forward that the unused inspection hook costs: its `trace is not None` tests
    (7 per layer + 2, in model.py, layers.attention and layers.feed_forward)."""
    import timeit

    trace, checks = None, 7 * n_layers + 2
    per_check = min(timeit.repeat("trace is not None", globals={"trace": trace}, number=100_000, repeat=5)) / 100_000
    return checks * per_check


def worker_llama_np(a) -> dict:
    import llama_np

    t0 = time.perf_counter()
    model = llama_np.load(a.model, fp32=a.fp32)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    touch_pages(model.weights)               # first-touch page-in of the memory map, timed apart
    page_in_s = time.perf_counter() - t0
    prompt = prompt_tokens(model.config.vocab_size, a.prompt_len)
    n_ctx = a.prompt_len + a.new_tokens
    t0 = time.perf_counter()
    model.forward(prompt[:, :1], 0, model.new_cache(1, n_ctx))                 # first logits
    first_s = load_s + time.perf_counter() - t0
    prefill_s, decode_s = [], []
    for _ in range(a.repeats):                  # best of the repeats, for prefill and decode alike
        cache = model.new_cache(1, n_ctx)
        t0 = time.perf_counter()
        logits = model.forward(prompt, 0, cache)[0, -1]                          # (V,)
        prefill_s.append(time.perf_counter() - t0)
        tokens = []
        t0 = time.perf_counter()
        for pos in range(a.prompt_len, a.prompt_len + a.new_tokens):
            token = int(np.argmax(logits))
            tokens.append(token)
            logits = model.forward(np.array([[token]]), pos, cache)[0, -1]      # (V,)
        decode_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for pos in range(a.prompt_len, a.prompt_len + 4):          # the inspection hook, in use
        model.forward(np.array([[tokens[0]]]), pos, cache, trace={})
    traced_step_s = (time.perf_counter() - t0) / 4
    return {"load_s": load_s, "page_in_s": page_in_s, "first_logits_s": first_s,
            "prefill_tok_s": a.prompt_len / min(prefill_s), "decode_tok_s": a.new_tokens / min(decode_s),
            "traced_step_ms": 1e3 * traced_step_s, "hook_checks_us": 1e6 * unused_hook_cost(model.config.n_layers), "peak_rss_gib": peak_rss_gib(),
            "weights": weights_kind(model.weights), "tokens": tokens[:8]}


def hf_model(model_dir: str, dtype):
    """transformers' LlamaForCausalLM holding the converted model's weights (float16 -> dtype)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from llama_np.checkpoints.hf import HF_TO_META
    from llama_np.weights import read_model_dir

    args, w, _ = read_model_dir(model_dir)
    config = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.hidden_dim,
                         num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                         num_key_value_heads=args.n_kv_heads, rms_norm_eps=args.norm_eps,
                         rope_theta=args.rope_theta, max_position_embeddings=args.max_seq_len,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype).eval()
    model.model.rotary_emb = LlamaRotaryEmbedding(config)

    heads = {"attention.wq.weight": args.n_heads, "attention.wk.weight": args.n_kv_heads}

    def t(name):
        x = np.asarray(w[name])
        n = heads.get(name.split(".", 2)[-1])
        if n:   # Meta's interleaved rotary rows -> HF's half-split rows (the inverse of hf_to_meta_rows)
            rows, cols = x.shape
            x = x.reshape(n, rows // n // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)
        return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)

    # the converter's HF -> Meta name map, read backwards; one layer at a time to bound memory
    layer_names = {hf: meta for hf, meta in HF_TO_META.items() if "{i}" in hf}
    for i in range(args.n_layers):
        model.load_state_dict({hf.format(i=i): t(meta.format(i=i)) for hf, meta in layer_names.items()},
                              strict=False, assign=True)
    sd = {hf: t(meta) for hf, meta in HF_TO_META.items() if "{i}" not in hf}
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    assert not unexpected, unexpected
    return model, args


def worker_torch(a) -> dict:
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    t0 = time.perf_counter()
    model, args = hf_model(a.model, dtype)
    prompt = torch.from_numpy(prompt_tokens(args.vocab_size, a.prompt_len))
    with torch.no_grad():
        model(prompt[:, :1])
        first_s = time.perf_counter() - t0
        prefill_s = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            model(prompt, use_cache=True)
            prefill_s.append(time.perf_counter() - t0)

    class Clock(LogitsProcessor):   # called once per generated token, right after its forward
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    decode_tok_s = []
    for _ in range(a.repeats):                  # best of the repeats, as on our side
        clock = Clock()
        with torch.no_grad():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=a.new_tokens + 1,
                                 do_sample=False, logits_processor=LogitsProcessorList([clock]))
        decode_s = clock.times[-1] - clock.times[0]        # new_tokens forwards through the cache
        decode_tok_s.append((len(clock.times) - 1) / decode_s)
    return {"load_s": None, "first_logits_s": first_s, "prefill_tok_s": a.prompt_len / min(prefill_s),
            "decode_tok_s": max(decode_tok_s), "peak_rss_gib": peak_rss_gib(),
            "tokens": out[0, a.prompt_len:a.prompt_len + 8].tolist()}


def worker_convert(a) -> dict:
    """Time a conversion (`--dtype`), or with --quantize a `llama-np quantize` of a converted directory;
    peak RSS, and the peak of its anonymous part (sampled every 50 ms): the memory-mapped source
    pages count in RSS but are the kernel's page cache, dropped at will."""
    import threading

    from llama_np.checkpoints.convert import convert, quantize

    peak_anon, done = [0], threading.Event()

    def sample():
        while not done.wait(0.05):
            peak_anon[0] = max(peak_anon[0], _status_kib("RssAnon"))

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    if a.quantize:
        quantize(a.model, a.out, progress=False)
    else:
        convert(a.model, a.out, progress=False, weight_type=a.weight_type)
    seconds = time.perf_counter() - t0
    done.set()
    size = lambda d: sum(p.stat().st_size for p in Path(d).iterdir() if p.is_file()) if Path(d).is_dir() \
        else Path(d).stat().st_size
    return {"seconds": seconds, "peak_rss_gib": peak_rss_gib(), "peak_anon_gib": peak_anon[0] / 2**20,
            "gb_before": size(a.model) / 1e9, "gb_after": size(a.out) / 1e9}


def timed_once(record: Path, out: Path, *args, keep: bool = True) -> dict | None:
    """Run the convert worker into `out` unless `record` already holds its result; with keep=False
    the output is deleted afterwards (only the timing is wanted)."""
    import shutil

    if not record.exists() and not (keep and (out / "config.json").exists()):
        result = run_worker("convert", *args, "--out", out)
        if result:
            record.write_text(json.dumps(result))
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    return json.loads(record.read_text()) if record.exists() else None


def worker_bandwidth(a) -> dict:
    return {"bandwidth": memory_bandwidth()}


WORKERS = {"llama_np": worker_llama_np, "torch": worker_torch, "convert": worker_convert,
           "bandwidth": worker_bandwidth}


def run_worker(kind: str, *args) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", kind, *map(str, args)]
    print("  $ " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stderr[-3000:], file=sys.stderr)
        return None
    result = json.loads(p.stdout.strip().splitlines()[-1])
    print("    " + json.dumps(result), file=sys.stderr, flush=True)
    return result


# ---------------------------------------------------------------- the parent
def blas_kernel() -> str:
    """The OpenBLAS core NumPy's BLAS chose (it follows OPENBLAS_CORETYPE when that is set)."""
    try:
        path = next(l.split()[-1] for l in open("/proc/self/maps") if "openblas" in l.lower() and ".so" in l)
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename"):
            if hasattr(lib, name):
                fn = getattr(lib, name)
                fn.restype = ctypes.c_char_p
                return f"OpenBLAS {fn().decode()}"
    except (StopIteration, OSError):
        pass
    return "unknown BLAS"


def memory_bandwidth() -> float:
    """Bytes/s of a 512 MB float32 matrix-vector product (it reads each matrix byte once): the
    median of 11 runs (the fastest run of a shared machine is an outlier, not the bandwidth)."""
    w = np.random.default_rng(0).standard_normal((32768, 4096), dtype=np.float32)   # 512 MiB
    x = np.ones(4096, np.float32)
    return w.nbytes / float(np.median([_timed(lambda: w @ x) for _ in range(11)]))


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


BYTES_PER_WEIGHT = {"fp32 copies": 4, "fp16 fused": 2, "int8 rows": 1}


def decode_bytes(shape: str, weights: str) -> int:
    """Weight bytes one decoded token reads: every matrix but the embedding table (one row);
    `weights` as weights_kind says (int8's float32 row scales are under 0.1% and left out)."""
    from llama_np.spec import expected_shapes

    n = sum(int(np.prod(s)) for name, s in expected_shapes(model_args(shape)).items()
            if name != "tok_embeddings.weight")
    return n * BYTES_PER_WEIGHT[weights]


def fmt(x, spec=".1f", none="—"):
    return none if x is None else format(x, spec)


def table(rows: list[dict], meta: dict) -> str:
    head = ("| shape | side | weights | prefill tok/s (128) | decode tok/s | decode vs torch fp32 "
            "| decode vs torch bf16 | prefill vs torch fp32 | load s | page-in s | load → first logits s | peak RSS GiB | floor tok/s "
            "| decode ÷ floor time |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['side']} | {r.get('weights', '')} | {fmt(r.get('prefill_tok_s'))} "
                     f"| {fmt(r.get('decode_tok_s'), '.2f')} | {fmt(r.get('decode_ratio'), '.2f', '')}"
                     f"{'×' if r.get('decode_ratio') else ''} | {fmt(r.get('decode_ratio_bf16'), '.2f', '')}"
                     f"{'×' if r.get('decode_ratio_bf16') else ''} | {fmt(r.get('prefill_ratio'), '.2f', '')}"
                     f"{'×' if r.get('prefill_ratio') else ''} | {fmt(r.get('load_s'), '.2f', '')} "
                     f"| {fmt(r.get('page_in_s'), '.2f', '')} | {fmt(r.get('first_logits_s'), '.2f')} "
                     f"| {fmt(r.get('peak_rss_gib'), '.2f')} | {fmt(r.get('floor_tok_s'), '.1f', '')} "
                     f"| {fmt(r.get('floor_multiple'), '.2f', '')}{'×' if r.get('floor_multiple') else ''} |")
    hook = [f"{r['shape']} {r['weights']}: {r['hook_checks_us']:.2f} µs per forward unused "
            f"({r['hook_checks_us'] * r['decode_tok_s'] / 1e4:.3f}% of a decode step), "
            f"{r['traced_step_ms']:.1f} ms per decode step in use vs {1e3 / r['decode_tok_s']:.1f} ms plain"
            for r in rows if r.get("hook_checks_us") is not None and r.get("decode_tok_s")]
    notes = [f"Machine: {meta['machine']}; {meta['cores']} cores; NumPy {meta['numpy']} ({meta['blas']}); "
             f"torch {meta['torch']}, transformers {meta['transformers']}. Date: {meta['date']}.",
             f"Command: `{meta['command']}`",
             "Floor = weight bytes one decoded token reads (all matrices but the embedding table, "
             "float32 for fp32 copies, float16 for the fused path, int8 for int8 rows) ÷ memory bandwidth, "
             "measured (median of "
             "11 512 MB float32 GEMVs) in a subprocess right before each llama_np row, because this shared "
             "machine's bandwidth drifts during a run: " + ", ".join(
                 f"{r['shape']} {r['bandwidth_gb_s']:.1f} GB/s" for r in rows if r.get("bandwidth_gb_s")) + ".",
             "Random weights, same prompt (128 random ids) on both sides; greedy; each side in its own "
             "subprocess; prefill and decode are the best of 2 runs on both sides (1 for the 7B shape). torch = transformers LlamaForCausalLM (sdpa attention), KV-cached `generate`; "
             "its load → first logits is model construction + first forward from the same converted weights.",
             "llama_np: load s = `llama_np.load` (memory-maps; with fp32 copies it also widens every matrix); "
             "page-in s = first touch of every page of the weights, timed apart; load → first logits = load + "
             "a one-token forward, page-in excluded.",
             "Inspection hook (`forward(..., trace={})`): its cost when unused is the `trace is not None` "
             "tests in the forward pass, timed: " + "; ".join(hook) + "."]
    if meta.get("convert"):
        c = meta["convert"]
        notes.append(f"7B-shaped conversion (Meta consolidated.00.pth, random bf16, 13.5 GB → float16 "
                     f"safetensors): {c['seconds']:.0f} s, peak RSS {c['peak_rss_gib']:.2f} GiB, of which "
                     f"anonymous memory at most {c['peak_anon_gib']:.2f} GiB (the rest is the memory-mapped "
                     f"source's page cache, which the kernel can drop at any time).")
    int8 = [f"{shape} {how}: {c['gb_before']:.2f} → {c['gb_after']:.2f} GB in {c['seconds']:.1f} s, peak RSS "
            f"{c['peak_rss_gib']:.2f} GiB (anonymous at most {c['peak_anon_gib']:.2f} GiB)"
            for shape, how, c in meta.get("int8_conversions", []) if c]
    if int8:
        notes.append("int8 directories (written once, timed): " + "; ".join(int8) + ".")
    if meta.get("note"):
        notes.append(meta["note"])
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def update_readme(text: str) -> None:
    readme = REPO / "README.md"
    content = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in content:
        content = content.rstrip("\n") + f"\n\n## Speed\n\n{start}\n{end}\n"
    before, rest = content.split(start, 1)
    after = rest.split(end, 1)[1]
    readme.write_text(f"{before}{start}\n{text}{end}{after}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="stories15M,stories110M,TinyLlama-1.1B")
    p.add_argument("--with-7b", action="store_true", help="also the LLaMA-2-7B shape (27 GB of disk, once)")
    p.add_argument("--cache-dir", default="/work/bench-cache", type=Path)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--new-tokens-7b", type=int, default=16, help="decode tokens for the 7B shape (default 16)")
    p.add_argument("--no-torch-7b", action="store_true", help="skip transformers bf16 on the 7B shape")
    p.add_argument("--fp32", default="auto", choices=["auto", "on", "off"], help="llama_np weight policy")
    p.add_argument("--update-readme", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md")
    # worker mode
    p.add_argument("--worker", choices=sorted(WORKERS))
    p.add_argument("--model")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--weight-type", default="float16", help="convert worker: float16 or int8")
    p.add_argument("--quantize", action="store_true", help="convert worker: llama-np quantize MODEL OUT")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    if a.worker:
        a.out = a.out if a.worker == "convert" else None
        print(json.dumps(WORKERS[a.worker](a)))
        return 0

    import torch
    import transformers

    a.cache_dir.mkdir(parents=True, exist_ok=True)
    shapes = [s for s in a.shapes.split(",") if s] + ([BIG] if a.with_7b else [])
    bandwidth = memory_bandwidth()
    print(f"memory bandwidth {bandwidth / 1e9:.1f} GB/s; BLAS {blas_kernel()}", file=sys.stderr)
    meta = {"machine": f"{platform.processor() or platform.machine()} {_cpu_name()}, "
                       f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
            "cores": len(os.sched_getaffinity(0)), "numpy": np.__version__, "blas": blas_kernel(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "date": datetime.date.today().isoformat(), "bandwidth": bandwidth,
            "command": _command_line()}
    rows = []
    meta["int8_conversions"] = []
    for shape in shapes:
        big = shape == BIG
        if big:
            src = write_meta(a.cache_dir / "llama-2-7b-meta")
            model_dir = a.cache_dir / f"{BIG}-np"
            record = a.cache_dir / "convert-7b.json"
            if not (model_dir / "config.json").exists():
                record.write_text(json.dumps(run_worker("convert", "--model", src, "--out", model_dir)))
            meta["convert"] = json.loads(record.read_text()) if record.exists() else None
            meta["int8_conversions"].append((shape, "convert --dtype int8 (from Meta bf16)", timed_once(
                a.cache_dir / "convert-7b-int8.json", a.cache_dir / f"{BIG}-np-int8-convert",
                "--model", src, "--weight-type", "int8", keep=False)))
        else:
            model_dir = make_converted(shape, a.cache_dir)
        int8_dir = a.cache_dir / f"{shape}-np-int8"
        meta["int8_conversions"].append((shape, "quantize (from float16)", timed_once(
            a.cache_dir / f"quantize-{shape}.json", int8_dir, "--model", model_dir, "--quantize")))
        n_new = a.new_tokens_7b if big else a.new_tokens
        common = ["--prompt-len", a.prompt_len, "--new-tokens", n_new, "--repeats", 1 if big else 2]
        print(f"{shape}:", file=sys.stderr)
        ours = []
        for d in (model_dir, int8_dir):
            bandwidth_now = (run_worker("bandwidth") or {}).get("bandwidth", bandwidth)   # this row's floor
            r = run_worker("llama_np", "--model", d, *common, "--fp32", a.fp32)
            if r:
                floor = bandwidth_now / decode_bytes(shape, r["weights"])
                r.update(bandwidth_gb_s=bandwidth_now / 1e9, floor_tok_s=floor, floor_multiple=floor / r["decode_tok_s"])
            ours.append(r or {})
        sides = [] if big else [("torch fp32", "float32")]
        if not (big and a.no_torch_7b):
            sides.append(("torch bf16", "bfloat16"))
        theirs = {name: run_worker("torch", "--model", model_dir, *common, "--dtype", dtype) for name, dtype in sides}
        ref, bf16 = theirs.get("torch fp32"), theirs.get("torch bf16")
        for r in ours:
            if r and ref:
                r.update(decode_ratio=r["decode_tok_s"] / ref["decode_tok_s"],
                         prefill_ratio=r["prefill_tok_s"] / ref["prefill_tok_s"])
            if r and bf16:
                r.update(decode_ratio_bf16=r["decode_tok_s"] / bf16["decode_tok_s"])
        suffix = f" ({n_new} new)" if n_new != a.new_tokens else ""
        rows += [{"shape": shape + suffix, "side": "llama_np", **r} for r in ours]
        for name, r in theirs.items():
            rows.append({"shape": shape + suffix, "side": name, "weights": name.split()[1], **(r or {})})
    text = table(rows, meta)
    print(text)
    a.out.write_text(text)
    a.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    if a.update_readme:
        update_readme(text)
    return 0


def _cpu_name() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return ""


def _command_line() -> str:
    unset = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v not in os.environ]
    prefix = f"env -u {' -u '.join(unset)} " if unset else ""
    return prefix + "python benchmarks/bench.py " + " ".join(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
