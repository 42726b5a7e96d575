"""What the forward pass computes with: the load policy for the float16 weights on disk.

The converted model stores every weight as float16, memory-mapped. Two ways to compute with it
(kernels.py has the products):

  fp32 copies   convert every matrix once at load time; decoding then streams float32 bytes
                through BLAS at memory bandwidth. Costs 2x the file size in RAM.
  fused fp16    keep the float16 memory map and convert a cache-sized block of rows at a time,
                right before its product. Costs no extra RAM; a 7B model's 13.5 GB of float16
                fits a 24 GB machine where its 27 GB of float32 would not.

`llama_np.load(path, fp32="auto"|"on"|"off")` chooses; "auto" makes the copies when their float32
bytes fit in half of the RAM the kernel reports available (/proc/meminfo MemAvailable).

An int8 directory's matrices (Int8Rows) stay int8 whatever the policy: whoever quantized a model
chose a quarter of float32's memory, and float32 copies would give that back (a 7B model's 27 GB).
Their product widens cache-sized blocks instead (kernels.linear_i8). A float16 matrix in an int8
directory (if any) follows the policy like any other.
"""
from __future__ import annotations

import numpy as np

from .errors import LlamaNpError
from .kernels import to_float32
from .pages import drop_pages

FP32_CHOICES = ("auto", "on", "off")


def mem_available() -> int:
    """Bytes of RAM the kernel says can be used without swapping (/proc/meminfo MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def fp32_bytes(weights: dict[str, np.ndarray]) -> int:
    """RAM the float32 copies of the float16 matrices would take (the embedding table stays float16)."""
    return sum(w.size * 4 for name, w in weights.items()
               if w.dtype == np.float16 and w.ndim == 2 and name != "tok_embeddings.weight")


def want_fp32(weights: dict[str, np.ndarray], fp32: str) -> bool:
    """The policy: "on", "off", or "auto" = the float32 copies fit in half of MemAvailable."""
    if fp32 not in FP32_CHOICES:
        raise LlamaNpError(f"fp32 must be one of {', '.join(FP32_CHOICES)}, got {fp32!r}")
    if fp32 == "auto":
        return fp32_bytes(weights) <= mem_available() // 2
    return fp32 == "on"


def working_weights(weights: dict[str, np.ndarray], fp32: str = "auto") -> dict[str, np.ndarray]:
    """The arrays the forward pass computes with: float32 copies of the matrices if the policy
    says so (the float16 map's pages are dropped as each is copied), else the float16 maps.
    Norm weights are always float32 (they are tiny); the embedding table always stays float16,
    since a forward pass reads only the rows of its tokens."""
    copies = want_fp32(weights, fp32)
    out = {}
    for name, w in weights.items():
        if w.dtype != np.float16 or name == "tok_embeddings.weight" or (w.ndim == 2 and not copies):
            out[name] = w
            continue
        out[name] = to_float32(w)
        drop_pages(w)
    return out
