"""Runs one of llama_np's readers on each file it is given, in a process with a memory limit.

Started by test_hostile_files.py. Reads lines "READER PATH" from stdin and answers each with one
line: "ok", "refused <message>" (LlamaNpError: the one acceptable failure), or "other <type>:
<message>" (any other exception: a bug). A crash or a runaway allocation ends the process (the
address-space limit turns the allocation into MemoryError, reported as "other"), which the test
sees as a dead worker.
"""
import resource
import sys
import traceback
from pathlib import Path

import numpy as np

import llama_np
from llama_np.checkpoints.hf import read_hf
from llama_np.checkpoints.llama2c import read_llama2c
from llama_np.checkpoints.meta import read_meta
from llama_np.checkpoints.pth import LazyTensor, load_pth
from llama_np.errors import LlamaNpError
from llama_np.weights import read_safetensors


def touch(x):
    """Read every element, so a view that reaches outside its file faults here."""
    if isinstance(x, LazyTensor):
        x = x.numpy()
    if isinstance(x, np.ndarray) and x.size:
        float(np.asarray(x, dtype=np.float64).sum())


def walk(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            walk(v)
    else:
        touch(obj)


def run(reader: str, path: Path):
    if reader == "pth":
        walk(load_pth(path))
    elif reader == "safetensors":
        walk(read_safetensors(path))
    elif reader in ("llama2c", "meta", "hf"):
        read = {"llama2c": lambda p: read_llama2c(p), "meta": lambda p: read_meta(p, None),
                "hf": lambda p: read_hf(p)}[reader]
        args, tensors = read(path)
        for _, load in tensors:
            touch(load())
    elif reader == "model_dir":
        model = llama_np.load(path)
        model.forward(np.array([[1, 2]]), 0)
    else:
        raise SystemExit(f"unknown reader {reader}")


def main():
    extra = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 30   # bytes a tiny file may justify, and more
    vm = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize:")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, vm + extra))
    for line in sys.stdin:
        reader, path = line.rstrip("\n").split(" ", 1)
        try:
            run(reader, Path(path))
            answer = "ok"
        except LlamaNpError as e:
            answer = "refused " + " ".join(str(e).split())[:300]
        except BaseException as e:                       # noqa: BLE001 - the property under test
            answer = "other " + " ".join(f"{type(e).__name__}: {e}".split())[:300]
            answer += " | " + " ".join(traceback.format_exc().split())[-400:]
        print(answer, flush=True)


if __name__ == "__main__":
    main()
