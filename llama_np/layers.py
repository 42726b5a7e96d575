"""The components of LLaMA 2, each a plain function of arrays (compare Meta's llama/model.py).

Dimension letters, used in every shape comment of the package:
    B   batch size                    T   tokens in this forward call
    D   model width (dim)             S   positions attended to: start_pos + T
    H   query heads (n_heads)         KVH key/value heads (n_kv_heads)
    HD  head_dim = D // H             F   FFN width (hidden_dim)
    V   vocabulary size               R   n_rep = H // KVH, query heads per kv head
All activations are float32. Weights are (out_features, in_features), as in torch's Linear,
so a projection is `x @ w.T`.
"""
from __future__ import annotations

import numpy as np

from .kernels import matmul_t


def record(trace: dict | None, **arrays: np.ndarray) -> None:
    """The inspection hook (forward's trace={}): keep a copy of each array under its name."""
    if trace is not None:
        trace.update({name: np.array(x, copy=True) for name, x in arrays.items()})


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight.  (..., D) -> (..., D)"""
    assert x.shape[-1] == weight.shape[0], f"rms_norm: x {x.shape} vs weight {weight.shape}"
    inv_rms = 1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + eps)  # (..., 1)
    return (x * inv_rms * weight).astype(np.float32, copy=False)


def rope_tables(head_dim: int, max_seq_len: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """Rotary tables cos, sin of shape (max_seq_len, HD/2): angle[p, i] = p * theta^(-2i/HD).

    Pair i of a head is rotated by angle p * freq[i] at position p (RoFormer, Su et al. 2021).
    The angles are rounded to float32 before cos/sin exactly as Meta's precompute_freqs_cis
    (and Hugging Face) do, so that we agree with them at long positions too.
    """
    assert head_dim % 2 == 0, f"rope_tables: head_dim {head_dim} must be even"
    freqs = (1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32)  # (HD/2,)
    positions = np.arange(max_seq_len, dtype=np.float32)                                  # (max_seq_len,)
    angles = np.outer(positions, freqs)                                  # (max_seq_len, HD/2) float32
    return np.cos(angles.astype(np.float64)).astype(np.float32), np.sin(angles.astype(np.float64)).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate each pair of x by its angle.  x (B, T, n, HD), cos/sin (T, HD/2) -> (B, T, n, HD)

    Meta's layout pairs *interleaved* neighbours: (x[0], x[1]), (x[2], x[3]), ... — the real and
    imaginary parts of the complex numbers in Meta's apply_rotary_emb. (Hugging Face pairs x[i]
    with x[i + HD/2] instead and permutes wq/wk rows to match.) A pair (a, b) rotated by angle t:
        (a, b) -> (a cos t - b sin t,  a sin t + b cos t)
    which is the complex product (a + ib) * e^(it).
    """
    B, T, n, HD = x.shape
    assert cos.shape == sin.shape == (T, HD // 2), f"apply_rope: x {x.shape} vs tables {cos.shape}"
    a, b = x[..., 0::2], x[..., 1::2]                       # (B, T, n, HD/2) each
    c, s = cos[:, None, :], sin[:, None, :]                 # (T, 1, HD/2), broadcast over heads
    out = np.empty_like(x)                                  # (B, T, n, HD)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def repeat_kv(x: np.ndarray, n_rep: int) -> np.ndarray:
    """Meta's repeat_kv: each kv head serves n_rep consecutive query heads.  (B, S, KVH, HD) -> (B, S, KVH*R, HD)

    Query head h reads kv head h // n_rep. `attention` below gets the same result without the
    copy by grouping the query heads instead; this function spells the sharing out.
    """
    B, S, KVH, HD = x.shape
    return np.broadcast_to(x[:, :, :, None, :], (B, S, KVH, n_rep, HD)).reshape(B, S, KVH * n_rep, HD)


def causal_mask(T: int, start_pos: int) -> np.ndarray:
    """Additive mask (T, S) with S = start_pos + T: query t (at position start_pos + t) may see key
    positions 0 .. start_pos + t. The scores are (T, S), not (T, T), because with a KV cache the
    T new queries also attend to the start_pos cached positions, all of which lie in their past.
    """
    S = start_pos + T
    query_pos = start_pos + np.arange(T)[:, None]            # (T, 1)
    key_pos = np.arange(S)[None, :]                          # (1, S)
    return np.where(key_pos <= query_pos, 0.0, -np.inf).astype(np.float32)  # (T, S)


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, mask: np.ndarray | None,
              trace: dict | None = None) -> np.ndarray:
    """Grouped-query scaled dot-product attention: softmax(q k^T / sqrt(HD) + mask) v.

    q (B, T, H, HD); keys, values (B, S, KVH, HD); mask (T, S) or None -> (B, T, H, HD)
    Query head h = kvh * R + r shares kv head kvh (as Meta's repeat_kv). Instead of repeating
    the keys R times we stack the R query heads of a group (times their T tokens) into the rows of
    one matrix, so each kv head takes part in a single matrix product. keys and values are read
    in place: their transposes below are strided views of the cache that BLAS takes as they are.
    """
    B, T, H, HD = q.shape
    _, S, KVH, _ = keys.shape
    assert H % KVH == 0 and keys.shape == values.shape == (B, S, KVH, HD), \
        f"attention: q {q.shape}, keys {keys.shape}, values {values.shape}"
    R = H // KVH
    qg = q.reshape(B, T, KVH, R, HD).transpose(0, 2, 3, 1, 4).reshape(B, KVH, R * T, HD)  # (B, KVH, R*T, HD)
    k = keys.transpose(0, 2, 3, 1)                                  # (B, KVH, HD, S) view
    v = values.transpose(0, 2, 1, 3)                                # (B, KVH, S, HD) view
    scores = (qg @ k).reshape(B, KVH, R, T, S)                      # (B, KVH, R, T, S)
    scores *= np.float32(1.0 / np.sqrt(HD))
    if mask is not None:
        scores += mask                                              # (T, S) broadcast
    probs = softmax(scores, axis=-1)                                # (B, KVH, R, T, S)
    record(trace, scores=scores.reshape(B, H, T, S), probs=probs.reshape(B, H, T, S))
    out = probs.reshape(B, KVH, R * T, S) @ v                       # (B, KVH, R*T, HD)
    return out.reshape(B, KVH, R, T, HD).transpose(0, 3, 1, 2, 4).reshape(B, T, H, HD)  # (B, T, H, HD)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum, stable for -inf entries (masked positions get probability 0)."""
    e = x - np.max(x, axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), with sigmoid(x) = (1 + tanh(x/2)) / 2 so that no exp can overflow."""
    return x * (0.5 + 0.5 * np.tanh(0.5 * x))


def linear(x: np.ndarray, w) -> np.ndarray:
    """A bias-free projection, torch's Linear: (..., in) @ (out, in).T -> (..., out)

    How the product runs depends on the weight's type (a float32 matrix goes straight to BLAS, a
    float16 memory map is widened block by block inside the product): see kernels.py.
    """
    assert x.shape[-1] == w.shape[1], f"linear: x {x.shape} vs w {w.shape}"
    return matmul_t(x.reshape(-1, w.shape[1]), w).reshape(*x.shape[:-1], w.shape[0])


def feed_forward(x: np.ndarray, w1: np.ndarray, w2: np.ndarray, w3: np.ndarray,
                 trace: dict | None = None) -> np.ndarray:
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x).  (B, T, D) -> (B, T, D); w1, w3 (F, D), w2 (D, F)"""
    assert w1.shape == w3.shape and w2.shape == w1.shape[::-1] and x.shape[-1] == w1.shape[1], \
        f"feed_forward: x {x.shape}, w1 {w1.shape}, w2 {w2.shape}, w3 {w3.shape}"
    gate = silu(linear(x, w1))                                  # (B, T, F)
    up = linear(x, w3)                                          # (B, T, F)
    out = linear(gate * up, w2)                                 # (B, T, D)
    record(trace, ffn_gate=gate, ffn_up=up, ffn_out=out)
    return out
