"""Hostile and broken files: every reader returns the right model or one LlamaNpError — never
another exception, a crash, a hang or an allocation the file's size does not justify.

Property-based (hypothesis): each strategy starts from a valid file and mutates it — pickle bytes
and storage members of a torch zip, safetensors header fields, llama2.c header ints, JSON values
and types of config.json / params.json, and truncation at every length. The readers run in a
separate worker process under an address-space limit (tests/fuzz_worker.py), so a segfault or a
runaway allocation fails the example instead of killing pytest.

CI runs a bounded number of examples; LLAMA_NP_FUZZ_EXAMPLES=N runs N per reader (a deep campaign).
"""
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_np.spec import expected_shapes
from llama_np.config import ModelArgs
from llama_np.weights import write_model_dir
from reference import random_meta_weights, write_meta_checkpoint

HERE = Path(__file__).parent
DEEP = int(os.environ.get("LLAMA_NP_FUZZ_EXAMPLES", "0"))
SHAPE = dict(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=20, hidden_dim=24)
HOSTILE = [-1, 0, 1, 3, 2 ** 31, 2 ** 32 + 1, 2 ** 62, 2 ** 63, 2 ** 64 + 7, -2 ** 63, 1e308, 0.5, float("nan"),
           "x", "", None, True, [], {}, [1, 2, 3], [2 ** 62, 2 ** 62], [-4, 4], {"a": 1}]


def examples(n: int) -> int:
    return DEEP or n


FUZZ = dict(deadline=None, database=None, derandomize=not DEEP,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                   HealthCheck.data_too_large])


class Worker:
    """The reader process; restarted after it dies (which the example that killed it reports)."""

    def __init__(self):
        self.proc = None

    def ask(self, reader: str, path: Path, timeout: float = 30.0) -> str:
        if self.proc is None or self.proc.poll() is not None:
            env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
            self.proc = subprocess.Popen([sys.executable, str(HERE / "fuzz_worker.py"), str(1 << 30)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.proc.stdin.write(f"{reader} {path}\n")
        self.proc.stdin.flush()
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            self.proc = None
            return f"hang: no answer in {timeout} s"
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            return f"crash: the worker died with status {code}"
        return line.rstrip("\n")

    def close(self):
        if self.proc is not None:
            self.proc.kill()


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def check(worker, reader, path):
    answer = worker.ask(reader, path)
    assert answer == "ok" or answer.startswith("refused "), f"{reader} on {path}: {answer}"
    return answer


# ---- valid seed files


class Seeds(dict):
    def __repr__(self):                                # hypothesis prints the arguments of a failure
        return f"<seed files: {', '.join(self)}>"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    out = Seeds()
    # a torch zip: a state dict with bf16, a non-contiguous view and two tensors sharing a storage
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"a": torch.randn(3, 5, dtype=torch.bfloat16), "b": base, "c": base.t(), "d": base[1:3, 2:5],
          "e": torch.ones(2, dtype=torch.float16)}
    buf = io.BytesIO()
    torch.save(sd, buf)
    out["pth"] = buf.getvalue()
    # a converted model directory (its model.safetensors is also the safetensors seed)
    args = ModelArgs(**SHAPE, max_seq_len=32)
    rng = np.random.default_rng(0)
    tensors = [(n, (lambda s=s: rng.standard_normal(s).astype(np.float32) * 0.1))
               for n, s in expected_shapes(args).items()]
    model_dir = write_model_dir(root / "model", args, tensors, {"format": "test"}, None, progress=False)
    out["model_dir"] = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    out["safetensors"] = out["model_dir"]["model.safetensors"]
    # a llama2.c legacy .bin (separate classifier)
    d, L, F, V, HD = SHAPE["dim"], SHAPE["n_layers"], SHAPE["hidden_dim"], SHAPE["vocab_size"], 8
    kv = SHAPE["n_kv_heads"] * HD
    n_floats = V * d + L * d + L * (d * d + 2 * kv * d + d * d) + L * d + 3 * L * F * d + d + 2 * 32 * HD // 2 + V * d
    header = struct.pack("<7i", d, F, L, SHAPE["n_heads"], SHAPE["n_kv_heads"], -V, 32)
    out["llama2c"] = header + (rng.standard_normal(n_floats).astype("<f4") * 0.1).tobytes()
    # a Meta download (params.json + one consolidated.00.pth)
    meta = write_meta_checkpoint(root / "meta", {"dim": d, "n_layers": L, "n_heads": SHAPE["n_heads"],
                                                 "n_kv_heads": SHAPE["n_kv_heads"], "vocab_size": V,
                                                 "multiple_of": 8, "norm_eps": 1e-5},
                                 random_meta_weights(d, L, SHAPE["n_heads"], SHAPE["n_kv_heads"], V, 48))
    out["meta"] = {p.name: p.read_bytes() for p in meta.iterdir()}
    # a Hugging Face directory: transformers' own save_pretrained
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(hidden_size=d, intermediate_size=F, num_hidden_layers=L, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=V, max_position_embeddings=32, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "hf")
    out["hf"] = {p.name: p.read_bytes() for p in (root / "hf").iterdir() if p.is_file()}
    return out


def test_every_seed_file_reads_as_a_model(worker, seeds, tmp_path):
    """The property is not vacuous: each unmutated seed reads fine."""
    (tmp_path / "f.pth").write_bytes(seeds["pth"])
    assert check(worker, "pth", tmp_path / "f.pth") == "ok"
    (tmp_path / "f.safetensors").write_bytes(seeds["safetensors"])
    assert check(worker, "safetensors", tmp_path / "f.safetensors") == "ok"
    (tmp_path / "f.bin").write_bytes(seeds["llama2c"])
    assert check(worker, "llama2c", tmp_path / "f.bin") == "ok"
    for kind in ("model_dir", "meta", "hf"):
        write_dir(tmp_path / kind, seeds[kind])
        assert check(worker, kind, tmp_path / kind) == "ok", kind


def write_dir(path: Path, files: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


# ---- mutations


@st.composite
def byte_mutation(draw, blob: bytes) -> bytes:
    """Truncation at any length, or a few bytes overwritten, or an int field overwritten."""
    kind = draw(st.sampled_from(["truncate", "bytes", "int"]))
    if kind == "truncate":
        return blob[:draw(st.integers(0, len(blob) - 1))]
    out = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(blob) - 1))
        if kind == "bytes":
            out[at] = draw(st.integers(0, 255))
        else:
            value = draw(st.sampled_from([-1, 0, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 7, 2 ** 63 - 1, 2 ** 64 - 1]))
            width = draw(st.sampled_from([4, 8]))
            out[at:at + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    return bytes(out[:len(blob)]) if kind == "int" else bytes(out)


@st.composite
def json_mutation(draw, doc):
    """One value somewhere in a JSON document replaced by a hostile one (or a key removed)."""
    doc = json.loads(json.dumps(doc))
    paths = []

    def collect(x, path):
        paths.append(path)
        if isinstance(x, dict):
            for k, v in x.items():
                collect(v, path + [k])
        elif isinstance(x, list):
            for i, v in enumerate(x):
                collect(v, path + [i])
    collect(doc, [])
    path = draw(st.sampled_from(paths[1:]))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(st.sampled_from(HOSTILE))
    return doc


def safetensors_parts(blob: bytes):
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def safetensors_join(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def zip_members(blob: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return {name: z.read(name) for name in z.namelist()}


def zip_join(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@settings(max_examples=examples(70), **FUZZ)
@given(data=st.data())
def test_torch_zip_reader_refuses_or_reads_every_mutation(worker, seeds, tmp_path, data):
    members = zip_members(seeds["pth"])
    pkl = next(n for n in members if n.endswith("data.pkl"))
    target = data.draw(st.sampled_from(["pickle", "pickle", "storage", "whole file"]))
    if target == "pickle":                             # opcodes and their arguments (sizes, strides, ids)
        members[pkl] = data.draw(byte_mutation(members[pkl]))
        blob = zip_join(members)
    elif target == "storage":                          # a storage member cut short or dropped
        name = data.draw(st.sampled_from(sorted(n for n in members if "/data/" in n)))
        cut = data.draw(st.integers(-1, len(members[name]) - 1))
        if cut < 0:
            del members[name]
        else:
            members[name] = members[name][:cut]
        blob = zip_join(members)
    else:
        blob = data.draw(byte_mutation(seeds["pth"]))
    (tmp_path / "m.pth").write_bytes(blob)
    check(worker, "pth", tmp_path / "m.pth")


@settings(max_examples=examples(80), **FUZZ)
@given(data=st.data())
def test_safetensors_reader_refuses_or_reads_every_mutation(worker, seeds, tmp_path, data):
    header, body = safetensors_parts(seeds["safetensors"])
    if data.draw(st.booleans()):
        blob = safetensors_join(data.draw(json_mutation(header)), body)
    else:
        blob = data.draw(byte_mutation(seeds["safetensors"]))
    (tmp_path / "m.safetensors").write_bytes(blob)
    check(worker, "safetensors", tmp_path / "m.safetensors")


@settings(max_examples=examples(60), **FUZZ)
@given(data=st.data())
def test_llama2c_reader_refuses_or_reads_every_mutation(worker, seeds, tmp_path, data):
    blob = bytearray(seeds["llama2c"])
    if data.draw(st.booleans()):                       # the seven header ints
        i = data.draw(st.integers(0, 6))
        value = data.draw(st.sampled_from([-2 ** 31, -1, 0, 1, 2, 3, 8, 17, 2 ** 23, 2 ** 24, 2 ** 31 - 1]))
        blob[4 * i:4 * i + 4] = struct.pack("<i", value)
        blob = bytes(blob)
    else:
        blob = data.draw(byte_mutation(bytes(blob)))
    (tmp_path / "m.bin").write_bytes(blob)
    check(worker, "llama2c", tmp_path / "m.bin")


@settings(max_examples=examples(40), **FUZZ)
@given(data=st.data())
def test_converted_directory_refuses_or_loads_every_mutation(worker, seeds, tmp_path, data):
    files = dict(seeds["model_dir"])
    target = data.draw(st.sampled_from(["config.json", "model.safetensors"]))
    if target == "config.json":
        files[target] = json.dumps(data.draw(json_mutation(json.loads(files[target])))).encode()
    else:
        files[target] = data.draw(byte_mutation(files[target]))
    check(worker, "model_dir", write_dir(tmp_path / "model", files))


@settings(max_examples=examples(30), **FUZZ)
@given(data=st.data())
def test_meta_and_hf_configs_refuse_or_read_every_mutation(worker, seeds, tmp_path, data):
    kind = data.draw(st.sampled_from(["meta", "hf"]))
    name = "params.json" if kind == "meta" else "config.json"
    files = dict(seeds[kind])
    files[name] = json.dumps(data.draw(json_mutation(json.loads(files[name])))).encode()
    check(worker, kind, write_dir(tmp_path / kind, files))
