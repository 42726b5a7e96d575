"""int8 weights: one float32 scale per output row, symmetric round-to-nearest.

The format of llama2.c's runq.c and llama.cpp's Q8_0, with one group per row. A matrix W (out, in)
becomes q int8 (out, in) and s float32 (out,):

    s_i  = max_j |W_ij| / 127          the row's largest weight lands on +-127
    q_ij = round(W_ij / s_i)           in [-127, 127] (-128 is never used: symmetric)
    W_ij ~ s_i * q_ij                  with |W_ij - s_i q_ij| <= s_i / 2

A row of zeros gets s_i = 0 and q = 0 (no division by zero). A row that already is s_i times
int8 values with max |q| = 127 comes back exactly: 127 * s_i / 127 and s_i * q_ij / s_i are
quotients whose exact value is representable, so IEEE division returns them exactly (the
arithmetic is float32 for float16/float32 weights, float64 for float64 ones).

Why per row: an output row of W makes one output of `x @ W.T`, so its scale factors out of the
product (kernels.linear_i8) and costs one multiply per output, not per weight:

    (x @ (s * q).T)_ni = sum_j x_nj s_i q_ij = s_i * sum_j x_nj q_ij = s_i * (x @ q.T)_ni

and the error of one product is bounded by the scales (product_error_bound):

    |(x @ W.T)_ni - s_i (x @ q.T)_ni| = |sum_j x_nj (W_ij - s_i q_ij)| <= s_i / 2 * sum_j |x_nj|

Which matrices are int8 (`int8_names`): every matrix, including the embedding table (a forward
pass gathers int8 rows and scales them) and the classifier. Norm weights keep their precision.
Measured on stories260K (tests/test_quantize.py, README "int8 weights"), a clipped scale (the clip
ratio minimising each row's squared error, `best_clip_scales`) and a float16 classifier were both
tried against plain absmax; see the README for the numbers and why absmax stays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LlamaNpError
from .spec import tensor_specs

Q_MAX = 127                        # symmetric: int8 values in [-127, 127]
ROW_BLOCK_ELEMENTS = 1 << 20       # rows quantized together (float64 temporaries of ~8 MB)
CLIP_RATIOS = np.linspace(1.0, 0.75, 26)   # candidates of best_clip_scales, 1.0 (absmax) first


@dataclass(frozen=True, eq=False)
class Int8Rows:
    """A quantized matrix: q int8 (out, in) and one float32 scale per row, standing for scale[:, None] * q.

    `np.asarray(w, np.float32)` gives that float32 matrix (dequantize), so code that only reads
    weights (the PyTorch reference of compare.py, the notebooks) sees what the int8 model computes."""
    q: np.ndarray                  # (out, in) int8, usually a read-only memory map
    scale: np.ndarray              # (out,) float32

    def __post_init__(self):
        ok = (isinstance(self.q, np.ndarray) and isinstance(self.scale, np.ndarray) and self.q.dtype == np.int8
              and self.q.ndim == 2 and self.scale.dtype == np.float32 and self.scale.shape == self.q.shape[:1])
        if not ok:
            raise LlamaNpError(f"int8 rows need q int8 (out, in) and scale float32 (out,), got "
                               f"{getattr(self.q, 'dtype', '?')} {getattr(self.q, 'shape', '?')} and "
                               f"{getattr(self.scale, 'dtype', '?')} {getattr(self.scale, 'shape', '?')}")

    shape = property(lambda self: self.q.shape)
    ndim = property(lambda self: 2)
    dtype = property(lambda self: self.q.dtype)
    size = property(lambda self: self.q.size)
    nbytes = property(lambda self: self.q.nbytes + self.scale.nbytes)

    def __getitem__(self, index):
        """Rows of the float32 matrix (only those rows are widened: the embedding lookup); an index
        that also picks columns goes through the whole matrix."""
        if isinstance(index, tuple):
            return dequantize(self)[index]
        return self.q[index] * self.scale[index][..., None]          # (..., in) float32

    def __array__(self, dtype=None, copy=None):
        w = dequantize(self)
        return w if dtype is None else w.astype(dtype, copy=False)

    def __repr__(self):
        return f"Int8Rows(q int8 {self.q.shape}, scale float32 {self.scale.shape})"


def dequantize(w: Int8Rows) -> np.ndarray:
    """The float32 matrix scale[:, None] * q.  (out, in)"""
    return w.q * w.scale[:, None]                                    # int8 * float32 -> float32 (out, in)


def absmax_scales(w: np.ndarray) -> np.ndarray:
    """s_i = max_j |W_ij| / 127 (exact for rows that are s_i times int8 values).  (n, in) -> (n,)"""
    return np.maximum(np.max(w, axis=1), -np.min(w, axis=1)) / w.dtype.type(Q_MAX)


def round_rows(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """q_ij = round(W_ij / s_i) (half to even), clipped to [-127, 127]; 0 where s_i = 0 (the row is
    zero, or below float32's smallest scale).  (n, in), (n,) -> int8 (n, in)"""
    s = scale.astype(w.dtype)[:, None]                               # (n, 1)
    q = np.divide(w, np.where(s > 0, s, 1), out=np.empty_like(w))    # (n, in)
    q[(s == 0)[:, 0]] = 0
    np.rint(q, out=q)
    return np.clip(q, -Q_MAX, Q_MAX, out=q).astype(np.int8)


def best_clip_scales(w: np.ndarray, ratios=CLIP_RATIOS) -> np.ndarray:
    """Per row, the scale c * max|W_row| / 127 (c among `ratios`) whose int8 row is closest to W_row
    in squared error. Clipping the largest weights lets the others round on a finer grid; ties keep
    the first ratio (1.0 = absmax), so rows that absmax quantizes exactly stay exact.  (n, in) -> (n,)"""
    absmax = absmax_scales(w)                                        # (n,)
    best, best_err = absmax.astype(np.float32), np.full(len(w), np.inf)
    for c in ratios:
        s = (c * absmax).astype(np.float32)                          # (n,)
        err = np.sum(np.square(w - s[:, None] * round_rows(w, s)), axis=1)                 # (n,)
        better = err < best_err
        best[better], best_err[better] = s[better], err[better]
    return best


def quantize_rows(w: np.ndarray, name: str = "weight", scales=absmax_scales) -> Int8Rows:
    """Int8Rows of a float matrix (out, in), worked in row blocks (temporaries stay a few MB).
    A weight that is inf or nan is a LlamaNpError naming the tensor."""
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        raise LlamaNpError(f"tensor {name!r}: only float matrices are quantized, got {w.dtype} {w.shape}")
    n_out, n_in = w.shape
    q = np.empty((n_out, n_in), np.int8)                             # (out, in)
    scale = np.empty(n_out, np.float32)                              # (out,)
    rows = max(1, ROW_BLOCK_ELEMENTS // max(n_in, 1))
    work = np.result_type(w.dtype, np.float32)                       # float32, or float64 for float64
    for r in range(0, n_out, rows):
        block = np.asarray(w[r:r + rows], dtype=work)                # (n, in)
        if not np.isfinite(absmax_scales(block)).all():             # an inf or nan makes its row's max one
            raise LlamaNpError(f"tensor {name!r} contains inf or nan")
        s = np.asarray(scales(block))                                # (n,)
        if not np.isfinite(s.astype(np.float32)).all():
            raise LlamaNpError(f"tensor {name!r} has weights beyond float32 range: no float32 scale fits")
        scale[r:r + rows] = s
        q[r:r + rows] = round_rows(block, scale[r:r + rows])
    return Int8Rows(q, scale)


def rounding_error(w: np.ndarray, qw: Int8Rows) -> dict[str, float]:
    """How far the int8 matrix is from W: relative RMS error, the largest |error|, and the largest
    |error| in units of its row's half-step s_i / 2 (<= 1 proves round-to-nearest without clipping)."""
    w = np.asarray(w, np.float64)
    err = np.abs(w - qw.q * qw.scale.astype(np.float64)[:, None])   # (out, in)
    half = qw.scale.astype(np.float64)[:, None] / 2                  # (out, 1)
    in_steps = np.divide(err, half, out=np.where(err > 0, np.inf, 0.0), where=half > 0)
    norm = np.sqrt(np.mean(np.square(w)))
    return {"rel_rms": float(np.sqrt(np.mean(np.square(err))) / norm) if norm > 0 else 0.0,
            "max_abs": float(err.max(initial=0.0)), "max_in_half_steps": float(in_steps.max(initial=0.0))}


def product_error_bound(x: np.ndarray, qw: Int8Rows) -> np.ndarray:
    """The bound on |x @ W.T - x @ (s q).T| of absmax rounding: s_i / 2 * sum_j |x_nj|.  x (N, in) -> (N, out)"""
    return np.sum(np.abs(x.astype(np.float64)), axis=1, keepdims=True) * (qw.scale.astype(np.float64) / 2)


def int8_names(args) -> list[str]:
    """The tensors an int8 directory stores as int8 rows + scales: every matrix but the embedding
    table. The table stays float16 (measured: it is the one matrix whose rounding costs accuracy
    out of proportion, see the module doc) and costs no speed: a forward pass reads only its
    tokens' rows. Norm weights keep their precision."""
    return [name for name, spec in tensor_specs(args).items() if spec.is_matrix and name != "tok_embeddings.weight"]
