"""`llama-np compare MODEL_DIR`: our forward pass beside a PyTorch one on the same weights, tensor by tensor.

The reference is Meta's llama/model.py forward pass re-written in plain PyTorch as Meta wrote it:
complex-number rotary embeddings (torch.polar, view_as_complex), repeat_kv copying the kv heads,
an additive (T, S) mask of -inf, F.softmax, F.silu. It reads the same weights as float32 (an int8
matrix dequantized, scale * q: the reference checks our int8 arithmetic, not the rounding),
records the same names as `Llama.forward(trace=...)`, and every pair is reported as
max |ours - ref| / max |ref|, per layer and per component. The first component above the tolerance
is where to look when something is off.

PyTorch is optional: it is imported inside these functions only, never by the rest of llama_np.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from .errors import LlamaNpError
from .model import load

TOL = 1e-4
LAYER_COMPONENTS = ("attention_norm", "q", "k", "v", "q_rot", "k_rot", "scores", "probs", "attention_out", "h",
                    "ffn_norm", "ffn_gate", "ffn_up", "ffn_out", "out")


def require_torch():
    """The torch module, or a one-line LlamaNpError saying how to get it."""
    try:
        import torch
    except ImportError:
        raise LlamaNpError("compare needs PyTorch for its reference forward pass: pip install torch "
                           "(llama_np itself never needs it)") from None
    return torch


def torch_freqs_cis(head_dim: int, end: int, theta: float):
    """Meta's precompute_freqs_cis: e^(i * p * theta^(-2j/HD)) as complex64 (end, HD/2)."""
    torch = require_torch()
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    t = torch.arange(end, dtype=torch.float32)
    freqs = torch.outer(t, freqs).float()
    return torch.polar(torch.ones_like(freqs), freqs)


def torch_apply_rotary_emb(x, freqs_cis):
    """Meta's apply_rotary_emb for one tensor: interleaved pairs as complex numbers.  (B, T, n, HD)"""
    torch = require_torch()
    x_ = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))      # (B, T, n, HD/2) complex
    return torch.view_as_real(x_ * freqs_cis[None, :, None, :]).flatten(3)    # (B, T, n, HD)


def torch_rms_norm(x, weight, eps: float):
    torch = require_torch()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def torch_attention(x, w, p: str, args, freqs_cis, mask, rec: dict):
    """Meta's Attention.forward for a whole sequence (start_pos 0), recording as it goes.  (B, T, D)"""
    torch = require_torch()
    B, T, _ = x.shape
    H, KVH, HD = args.n_heads, args.n_kv_heads, args.head_dim
    xq = (x @ w(p + "attention.wq.weight").T).view(B, T, H, HD)
    xk = (x @ w(p + "attention.wk.weight").T).view(B, T, KVH, HD)
    xv = (x @ w(p + "attention.wv.weight").T).view(B, T, KVH, HD)
    rec["q"], rec["k"], rec["v"] = xq, xk, xv
    xq, xk = torch_apply_rotary_emb(xq, freqs_cis), torch_apply_rotary_emb(xk, freqs_cis)
    rec["q_rot"], rec["k_rot"] = xq, xk
    n_rep = H // KVH                                                           # Meta's repeat_kv
    keys = xk[:, :, :, None, :].expand(B, T, KVH, n_rep, HD).reshape(B, T, H, HD)
    values = xv[:, :, :, None, :].expand(B, T, KVH, n_rep, HD).reshape(B, T, H, HD)
    scores = xq.transpose(1, 2) @ keys.transpose(1, 2).transpose(2, 3) / math.sqrt(HD)  # (B, H, T, S)
    if mask is not None:
        scores = scores + mask
    probs = torch.nn.functional.softmax(scores.float(), dim=-1)
    rec["scores"], rec["probs"] = scores, probs
    out = (probs @ values.transpose(1, 2)).transpose(1, 2).reshape(B, T, H * HD)
    return out @ w(p + "attention.wo.weight").T


def torch_layer(h, w, i: int, args, freqs_cis, mask) -> tuple:
    """Meta's TransformerBlock: (the block's output, its recorded intermediates by our names)."""
    torch = require_torch()
    p, rec = f"layers.{i}.", {}
    rec["attention_norm"] = x = torch_rms_norm(h, w(p + "attention_norm.weight"), args.norm_eps)
    rec["attention_out"] = torch_attention(x, w, p, args, freqs_cis, mask, rec)
    rec["h"] = h = h + rec["attention_out"]
    rec["ffn_norm"] = x = torch_rms_norm(h, w(p + "ffn_norm.weight"), args.norm_eps)
    rec["ffn_gate"] = torch.nn.functional.silu(x @ w(p + "feed_forward.w1.weight").T)
    rec["ffn_up"] = x @ w(p + "feed_forward.w3.weight").T
    rec["ffn_out"] = (rec["ffn_gate"] * rec["ffn_up"]) @ w(p + "feed_forward.w2.weight").T
    rec["out"] = h = h + rec["ffn_out"]
    return h, {p + k: v.detach().numpy() for k, v in rec.items()}


def torch_reference(model, tokens: np.ndarray):
    """Yield (name, array) of the reference forward pass in order: embeddings, each layer's dict, norm, logits.

    Each weight is turned into a float32 tensor when used and dropped afterwards, so a 7B model
    needs one layer's weights in float32 at a time, not 28 GB."""
    torch = require_torch()
    args = model.config

    def w(name):
        return torch.from_numpy(np.asarray(model.weights[name], dtype=np.float32))

    with torch.no_grad():
        B, T = tokens.shape
        h = w("tok_embeddings.weight")[torch.as_tensor(tokens, dtype=torch.long)]       # (B, T, D)
        yield {"tok_embeddings": h.numpy().copy()}
        freqs_cis = torch_freqs_cis(args.head_dim, T, args.rope_theta)                 # (T, HD/2)
        mask = torch.triu(torch.full((T, T), float("-inf")), diagonal=1) if T > 1 else None
        for i in range(args.n_layers):
            h, rec = torch_layer(h, w, i, args, freqs_cis, mask)
            yield rec
        h = torch_rms_norm(h, w("norm.weight"), args.norm_eps)
        yield {"norm": h.numpy().copy(), "logits": (h @ w("output.weight").T).float().numpy()}


def relative_difference(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref| over the finite entries; inf when the -inf (masked) entries or the
    shapes disagree."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return math.inf
    finite = np.isfinite(ref)
    if not np.array_equal(finite, np.isfinite(ours)) or not np.array_equal(ours[~finite], ref[~finite]):
        return math.inf
    if not finite.any():
        return 0.0
    scale = np.max(np.abs(ref[finite]))
    diff = np.max(np.abs(ours[finite] - ref[finite]))
    return float(diff / scale) if scale > 0 else float(diff)


def diff_table(ours: dict, ref: dict) -> dict[str, float]:
    """name -> relative difference, for every name the reference recorded, in forward order."""
    missing = [n for n in ref if n not in ours]
    if missing:
        raise LlamaNpError(f"the model's trace lacks {missing[0]!r}: the inspection hook changed its names")
    return {name: relative_difference(ours[name], ref[name]) for name in ref}


def first_above(diffs: dict[str, float], tol: float = TOL) -> str | None:
    """The first tensor of the forward pass whose difference exceeds tol, or None."""
    return next((name for name, d in diffs.items() if not d <= tol), None)


def compare_tokens(model, n_tokens: int, prompt: str | None = None, seed: int = 0) -> np.ndarray:
    """(1, T) token ids: the encoded prompt, or BOS and n_tokens - 1 seeded random ids."""
    if prompt is not None:
        if model.tokenizer is None:
            raise LlamaNpError("--prompt needs a model with tokenizer.model; use --tokens N instead")
        ids = model.tokenizer.encode(prompt)
    else:
        if n_tokens < 1:
            raise LlamaNpError(f"--tokens must be >= 1, got {n_tokens}")
        rng = np.random.default_rng(seed)
        ids = [1] + rng.integers(min(3, model.config.vocab_size - 1), model.config.vocab_size, n_tokens - 1).tolist()
    if len(ids) > model.config.max_seq_len:
        raise LlamaNpError(f"{len(ids)} tokens exceed the model's context {model.config.max_seq_len}")
    return np.array([ids])


def run_compare(model, tokens: np.ndarray, out=sys.stdout, tol: float = TOL) -> dict[str, float]:
    """Print the table (one row per layer, streamed as the reference gets there); return all differences."""
    require_torch()
    ours = {}
    model.forward(tokens, start_pos=0, cache=model.new_cache(tokens.shape[0], tokens.shape[1]), trace=ours)
    widths = [max(len(c), 7) for c in LAYER_COMPONENTS]
    print(f"max |ours - torch| / max |torch| over {tokens.shape[1]} tokens (tolerance {tol:.0e})", file=out)
    diffs = {}
    for rec in torch_reference(model, tokens):
        part = diff_table(ours, rec)
        diffs.update(part)
        if "tok_embeddings" in part or "logits" in part:
            print("  ".join(f"{n} {d:.1e}" for n, d in part.items()), file=out)
            if "tok_embeddings" in part:
                print("layer  " + " ".join(c.rjust(wd) for c, wd in zip(LAYER_COMPONENTS, widths)), file=out)
            continue
        i = next(iter(part)).split(".")[1]
        cells = [f"{part[f'layers.{i}.{c}']:.1e}".rjust(wd) for c, wd in zip(LAYER_COMPONENTS, widths)]
        print(f"{i:>5}  " + " ".join(cells), file=out, flush=True)
    return diffs


def summary(diffs: dict[str, float], tol: float = TOL) -> str:
    worst = max(diffs, key=lambda n: diffs[n])
    bad = first_above(diffs, tol)
    verdict = "OK" if bad is None else f"MISMATCH, first at {bad} ({diffs[bad]:.1e})"
    return f"max relative difference: {diffs[worst]:.1e} at {worst} (tolerance {tol:.0e}): {verdict}"


def main(model_dir, n_tokens: int = 16, prompt: str | None = None) -> int:
    """The CLI command: 0 when every tensor agrees within TOL, 1 when one does not."""
    model = load(model_dir)                     # bad input is reported before the slow torch import
    tokens = compare_tokens(model, n_tokens, prompt)
    require_torch()
    diffs = run_compare(model, tokens)
    print(summary(diffs))
    return 0 if first_above(diffs) is None else 1
