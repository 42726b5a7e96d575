"""The matrix products of the forward pass, one per weight type, and the dispatch between them.

    float32   x @ w.T, straight to BLAS (w.T is a transposed view, not a copy)
    float16   the memory-mapped file itself: widened to float32 block by block inside the
              product (`linear_f16`), since NumPy has no float16 matrix product (`x @ w16.T`
              would first cast the whole matrix with NumPy's scalar cast, ~1.4 GB/s)
    int8      Int8Rows (quantize.py): the int8 memory map widened block by block the same way
              (NumPy's int8 -> float32 cast is exact), then one multiply per output by its row's
              scale (`linear_i8`)

Both narrow products share one blocking (`blocked_matmul_t`). Any other weight is refused: a
matrix the forward pass does not know how to multiply must never run silently (an int8 array
without its scales would give plausible-looking nonsense). Which type each weight has is chosen
when a model is converted (int8) and loaded (precision.py).

The conversion itself is exact integer work on the float16 bits (finite values only, which the
converter guarantees):

    float16  s eeeee mmmmmmmmmm                      (bias 15)
    float32  s eeeeeeee mmmmmmmmmmmmmmmmmmmmmmm       (bias 127)

Sign-extend the 16 bits to int32 and shift left by 13: the mantissa lands in the top of the
float32 mantissa, the exponent in the low 5 exponent bits, the sign in bit 31 (bits 30..28 hold
copies of the sign; we clear them). The result read as float32 is the value times 2^-112
(127 - 15 = 112), so a multiplication by 2^112 finishes it, exactly — float16 subnormals
included, which land on float32 subnormals and are normalised by the product.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import LlamaNpError
from .quantize import Int8Rows

BLOCK_ELEMENTS = 1 << 18           # 256K weights per block: 512 KB float16 + 1 MB float32, cache-sized
GEMM_BLOCK_ELEMENTS = 1 << 22      # 4M weights per block when many tokens share each converted block
_CLEAR_SIGN_COPIES = np.int32(0x8FFFFFFF - (1 << 32))   # keep bit 31, clear bits 30..28
_TWO_POW_112 = np.float32(2.0 ** 112)
_pool: ThreadPoolExecutor | None = None


def n_threads() -> int:
    """The cores this process may run on (NumPy ufuncs release the GIL, so threads use them all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _workers() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=n_threads(), thread_name_prefix="llama_np")
    return _pool


def f16_to_f32(h: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Exact float16 -> float32 of finite values with vectorised integer ops (see the module doc).

    h float16 (...), out float32 or int32 scratch of the same shape -> out viewed as float32.
    """
    assert h.dtype == np.float16 and out.shape == h.shape and out.itemsize == 4, \
        f"f16_to_f32: h {h.dtype} {h.shape}, out {out.dtype} {out.shape}"
    bits = out.view(np.int32)
    np.copyto(bits, h.view(np.int16))                    # sign-extend the 16 bits
    np.left_shift(bits, 13, out=bits)                    # s sss s eeeee mmmmmmmmmm 0000000000000
    np.bitwise_and(bits, _CLEAR_SIGN_COPIES, out=bits)   # s 000 0 eeeee mmmmmmmmmm 0000000000000
    value = bits.view(np.float32)
    np.multiply(value, _TWO_POW_112, out=value)          # rebias the exponent: 2^(127 - 15)
    return value


def on_all_cores(work, n_tasks: int) -> None:
    """work(k) for k < min(n_threads(), n_tasks), at the same time; this thread runs work(0) itself
    (a matrix of one block never waits for a hand-over to another thread)."""
    futures = [_workers().submit(work, k) for k in range(1, min(n_threads(), n_tasks))]
    work(0)
    for f in futures:
        f.result()


def _row_blocks(n_rows: int, n_cols: int, n_parts: int) -> list[tuple[int, int]]:
    """Split rows into n_parts contiguous ranges (one per thread)."""
    edges = np.linspace(0, n_rows, n_parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def blocked_matmul_t(x: np.ndarray, w: np.ndarray, widen, scratch_dtype) -> np.ndarray:
    """x @ w.T for a matrix w (out, in) stored narrower than float32, never materialising w in float32.

    `widen(block, scratch)` turns rows of w into float32 (a view of scratch, of `scratch_dtype`).
    x (N, in) float32 -> (N, out) float32. Every weight byte is read from memory once.
    Decoding (few rows in x): w is walked in blocks of ~BLOCK_ELEMENTS weights; each thread takes
    the next block when it is free (one shared iterator: a core slowed by another process does
    less, instead of holding the others up), widens it into its float32 scratch buffer, which stays
    in cache, and multiplies x by it. A prompt (many rows): the widening is shared by all N rows,
    so widen bigger blocks (on all threads) and hand each to one BLAS matrix product.
    """
    N, n_in = x.shape
    n_out = w.shape[0]
    assert w.ndim == 2 and w.shape[1] == n_in, f"blocked_matmul_t: x {x.shape} vs w {w.dtype} {w.shape}"
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((N, n_out), np.float32)                                # (N, out)
    if N >= 16:
        rows = max(1, GEMM_BLOCK_ELEMENTS // n_in)
        scratch = np.empty((min(rows, n_out), n_in), scratch_dtype)       # (rows, in)
        for r in range(0, n_out, rows):
            n = min(rows, n_out - r)
            block = widen_parallel(w[r:r + n], scratch[:n], widen)        # (n, in) float32
            np.matmul(x, block.T, out=out[:, r:r + n])                    # (N, n)
        return out
    rows = max(1, min(n_out, BLOCK_ELEMENTS // n_in))
    starts = range(0, n_out, rows)
    shared = iter(starts)                                                 # next() holds the GIL

    def work(_) -> None:
        scratch = np.empty((rows, n_in), scratch_dtype)                   # (rows, in)
        for r in shared:
            n = min(rows, n_out - r)
            block = widen(w[r:r + n], scratch[:n])                        # (n, in) float32
            if N == 1:
                np.dot(block, x[0], out=out[0, r:r + n])                  # (n,), BLAS gemv
            else:
                np.matmul(x, block.T, out=out[:, r:r + n])                # (N, n)

    on_all_cores(work, len(starts))
    return out


def widen_parallel(w: np.ndarray, out: np.ndarray, widen) -> np.ndarray:
    """widen(w, out) in blocks of BLOCK_ELEMENTS split over all cores; out contiguous -> float32 view."""
    assert out.shape == w.shape and out.flags.c_contiguous, f"widen_parallel: out {out.shape} vs {w.shape}"
    flat_in, flat_out = w.reshape(-1), out.reshape(-1)

    parts = _row_blocks(flat_in.size, 1, n_threads())

    def work(k: int) -> None:
        for a in range(parts[k][0], parts[k][1], BLOCK_ELEMENTS):
            b = min(a + BLOCK_ELEMENTS, parts[k][1])
            widen(flat_in[a:b], flat_out[a:b])

    on_all_cores(work, len(parts))
    return out.view(np.float32)


def linear_f16(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w.T for a float16 weight w (out, in): blocks widened exactly by f16_to_f32.  (N, in) -> (N, out)"""
    assert w.dtype == np.float16, f"linear_f16: w is {w.dtype}"
    return blocked_matmul_t(x, w, f16_to_f32, np.int32)


def i8_to_f32(q: np.ndarray, out: np.ndarray) -> np.ndarray:
    """int8 -> float32 (exact: every int8 is a float32) into out.  (...) -> (...)"""
    np.copyto(out, q, casting="unsafe")
    return out


def linear_i8(x: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """x @ W.T for W = scale[:, None] * q, int8 rows q (out, in) with one float32 scale per row.

    x (N, in) float32 -> (N, out) float32. A row's scale multiplies every term of its output,
    so it comes out of the sum:

        (x @ W.T)_ni = sum_j x_nj (s_i q_ij) = s_i * sum_j x_nj q_ij = s_i * (x @ q.T)_ni

    That is the whole algorithm: x @ q.T with q widened to float32 block by block (exactly, as
    blocked_matmul_t does for float16), then output column i times s_i — one multiply per output,
    none per weight. The int8 bytes are the only weight bytes read: a quarter of float32's.
    """
    assert q.dtype == np.int8 and scale.shape == q.shape[:1], f"linear_i8: q {q.dtype} {q.shape}, scale {scale.shape}"
    out = blocked_matmul_t(x, q, i8_to_f32, np.float32)                   # (N, out) = x @ q.T
    out *= scale                                                          # (N, out): column i times s_i
    return out


def to_float32(w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A float32 copy of a float16 array (into `out` if given), converted in blocks by all cores."""
    assert w.dtype == np.float16, f"to_float32: expected float16, got {w.dtype}"
    out = np.empty(w.shape, np.float32) if out is None else out
    assert out.dtype == np.float32, f"to_float32: out {out.dtype}"
    return widen_parallel(w, out, f16_to_f32)


MATRIX_DTYPES = (np.float32, np.float16)


def check_matrix(name: str, w) -> None:
    """A weight matrix the products below can take, or a one-line LlamaNpError."""
    if isinstance(w, Int8Rows):                # its own constructor checked q int8 (out, in), scale (out,)
        return
    if not (isinstance(w, np.ndarray) and w.dtype in MATRIX_DTYPES and w.ndim == 2):
        kind = f"{w.dtype} {w.ndim}-d array" if isinstance(w, np.ndarray) else type(w).__name__
        raise LlamaNpError(f"weight {name!r} is a {kind}; the forward pass multiplies float32 or float16 "
                           f"matrices, or int8 rows with their scales (Int8Rows), only")


def matmul_t(x: np.ndarray, w) -> np.ndarray:
    """x @ w.T for any weight type we know.  x (N, in) float32, w (out, in) -> (N, out) float32"""
    if isinstance(w, np.ndarray) and w.dtype == np.float32:
        return x @ w.T
    if isinstance(w, np.ndarray) and w.dtype == np.float16:
        return linear_f16(x, w)
    if isinstance(w, Int8Rows):
        return linear_i8(x, w.q, w.scale)
    check_matrix("?", w)                       # raises: not a weight type we multiply
    raise AssertionError("unreachable")


def gather_rows(table, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` of an embedding table as float32.  table (V, D), ids (...) -> (..., D)"""
    check_matrix("tok_embeddings.weight", table)
    if isinstance(table, Int8Rows):
        return table[ids]                      # int8 rows times their scales  (..., D) float32
    return table[ids].astype(np.float32)
