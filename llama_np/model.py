"""Llama: the LLaMA 2 forward pass over the converted weights (compare Meta's llama/model.py).

    tokens (B, T) -> embeddings (B, T, D)
      -> n_layers x [ h = x + attention(attention_norm(x)) ; out = h + feed_forward(ffn_norm(h)) ]
      -> norm -> output -> logits (B, T, V)

Shape letters are defined once in layers.py. The KV cache belongs to the caller
(`new_cache`), who passes it to every `forward` call along with the position `start_pos` of the
first token: a prompt is prefilled in one call, then tokens are decoded one call each.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import chat as chat_module
from . import generation
from .config import ModelArgs
from .errors import LlamaNpError
from .kv_cache import KVCache
from .kernels import check_matrix, gather_rows
from .layers import apply_rope, attention, causal_mask, feed_forward, linear, record, rms_norm, rope_tables
from .precision import working_weights
from .spec import tensor_specs
from .tokenizer import Tokenizer
from .weights import TOKENIZER_FILE, read_model_dir


def attention_block(x, wq, wk, wv, wo, cache_k, cache_v, start_pos: int, cos, sin, mask,
                    trace: dict | None = None) -> np.ndarray:
    """Self-attention with the KV cache of one layer.  x (B, T, D) -> (B, T, D)

    cache_k, cache_v: (B_max, max_seq_len, KVH, HD), written at positions start_pos .. start_pos+T-1.
    The head counts are read off the arrays: KVH and HD from the cache, H from wq's rows. They are
    the model's, or a tensor-parallel rank's share of its heads (llama_np/parallel): wq, wk, wv
    then hold that rank's heads' rows and wo their columns, and the result is the rank's part of
    the sum over heads that wo computes.
    """
    B, T, D = x.shape
    KVH, HD = cache_k.shape[2:]
    H = wq.shape[0] // HD
    assert wq.shape[0] == H * HD and wk.shape[0] == wv.shape[0] == KVH * HD and wo.shape[1] == H * HD, \
        f"attention_block: wq {wq.shape}, wk {wk.shape}, wv {wv.shape}, wo {wo.shape} vs {KVH} kv heads of {HD}"
    xq = linear(x, wq).reshape(B, T, H, HD)                     # (B, T, H, HD)
    xk = linear(x, wk).reshape(B, T, KVH, HD)                   # (B, T, KVH, HD)
    xv = linear(x, wv).reshape(B, T, KVH, HD)                   # (B, T, KVH, HD)
    record(trace, q=xq, k=xk, v=xv)
    xq, xk = apply_rope(xq, cos, sin), apply_rope(xk, cos, sin)  # Meta's interleaved pairs
    record(trace, q_rot=xq, k_rot=xk)

    S = start_pos + T
    cache_k[:B, start_pos:S] = xk
    cache_v[:B, start_pos:S] = xv
    keys, values = cache_k[:B, :S], cache_v[:B, :S]             # (B, S, KVH, HD) views, no copy

    out = attention(xq, keys, values, mask, trace)               # (B, T, H, HD)
    return linear(out.reshape(B, T, H * HD), wo)                 # (B, T, D)


def attention_branch(h, w, i: int, cache: KVCache, start_pos: int, cos, sin, mask, eps: float,
                     trace: dict | None = None) -> np.ndarray:
    """Layer i's attention branch, attention(attention_norm(h)), which the caller adds to h.  (B, T, D) -> (B, T, D)

    Given a tensor-parallel rank's weights and cache (llama_np/parallel) it is that rank's part of
    the branch: the parts of the N ranks sum to the whole.
    """
    p = f"layers.{i}."
    x = rms_norm(h, w[p + "attention_norm.weight"], eps)                                  # (B, T, D)
    attn = attention_block(x, w[p + "attention.wq.weight"], w[p + "attention.wk.weight"],
                           w[p + "attention.wv.weight"], w[p + "attention.wo.weight"],
                           cache.k[i], cache.v[i], start_pos, cos, sin, mask, trace)     # (B, T, D)
    record(trace, attention_norm=x, attention_out=attn)
    return attn


def ffn_branch(h, w, i: int, eps: float, trace: dict | None = None) -> np.ndarray:
    """Layer i's feed-forward branch, feed_forward(ffn_norm(h)), which the caller adds to h.  (B, T, D) -> (B, T, D)
    (a tensor-parallel rank's part of it, given that rank's weights)"""
    p = f"layers.{i}."
    x = rms_norm(h, w[p + "ffn_norm.weight"], eps)                                        # (B, T, D)
    record(trace, ffn_norm=x)
    return feed_forward(x, w[p + "feed_forward.w1.weight"], w[p + "feed_forward.w2.weight"],
                        w[p + "feed_forward.w3.weight"], trace)                          # (B, T, D)


def classifier(h, w, eps: float, trace: dict | None = None) -> np.ndarray:
    """The final norm and the output projection.  h (B, T, D) -> logits float32 (B, T, V)
    (a tensor-parallel rank's slice of the vocabulary, given that rank's output rows)"""
    h = rms_norm(h, w["norm.weight"], eps)                                                # (B, T, D)
    logits = linear(h, w["output.weight"]).astype(np.float32, copy=False)                 # (B, T, V)
    record(trace, norm=h, logits=logits)
    return logits


def positions(rope_cos, rope_sin, start_pos: int, T: int):
    """The rotary angles and the causal mask of positions start_pos .. start_pos+T-1 -> (cos, sin, mask)."""
    cos = rope_cos[start_pos:start_pos + T]                      # (T, HD/2)
    sin = rope_sin[start_pos:start_pos + T]                      # (T, HD/2)
    mask = causal_mask(T, start_pos) if T > 1 else None          # (T, S); one query sees everything
    return cos, sin, mask


def check_weights(args: ModelArgs, weights: dict) -> None:
    """Every tensor of the spec present with its shape, nothing else; matrices of a type the products
    know (kernels.py), norm weights float32 vectors. A one-line LlamaNpError otherwise."""
    specs = tensor_specs(args)
    for name, spec in specs.items():
        if name not in weights:
            raise LlamaNpError(f"weights: missing tensor {name!r}")
        w = weights[name]
        if tuple(w.shape) != spec.shape:
            raise LlamaNpError(f"weights: tensor {name!r} has shape {tuple(w.shape)}, the config implies {spec.shape}")
        if spec.is_matrix:
            check_matrix(name, w)
        elif not (isinstance(w, np.ndarray) and w.dtype == np.float32):
            raise LlamaNpError(f"weights: norm weight {name!r} must be a float32 array, got "
                               f"{getattr(w, 'dtype', type(w).__name__)}")
    extra = sorted(set(weights) - set(specs))
    if extra:
        raise LlamaNpError(f"weights: unexpected tensor {extra[0]!r} for a {args.n_layers}-layer model")


def cache_length(args: ModelArgs, max_seq_len: int | None) -> int:
    """The length of a new cache: max_seq_len, at most (and by default) the model's context."""
    max_seq_len = max_seq_len or args.max_seq_len
    if not 0 < max_seq_len <= args.max_seq_len:
        raise LlamaNpError(f"cache length {max_seq_len} exceeds the model's context {args.max_seq_len}")
    return max_seq_len


def forward_inputs(model, tokens, start_pos: int, cache):
    """forward's arguments checked -> (tokens as an integer array (B, T), the cache: a new one
    sized to the tokens when none is given). `model` has .config and .new_cache (a Llama, or a
    tensor-parallel model)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise LlamaNpError(f"forward: tokens must be an integer array (B, T), got {tokens.dtype} {tokens.shape}")
    B, T = tokens.shape
    if cache is None:
        if start_pos != 0:
            raise LlamaNpError("forward: start_pos > 0 needs the cache that holds the earlier positions")
        cache = model.new_cache(B, max(T, 1))
    if start_pos < 0 or start_pos + T > cache.max_seq_len:
        raise LlamaNpError(f"forward: positions {start_pos}..{start_pos + T - 1} do not fit the cache "
                           f"(max_seq_len {cache.max_seq_len})")
    if B > cache.batch_size:
        raise LlamaNpError(f"forward: batch {B} is larger than the cache's {cache.batch_size}")
    if T and (tokens.min() < 0 or tokens.max() >= model.config.vocab_size):
        raise LlamaNpError(f"forward: token ids must lie in [0, {model.config.vocab_size})")
    return tokens, cache


class Llama:
    """A converted LLaMA 2 model: config, weights (name -> array, Meta's names) and tokenizer."""

    def __init__(self, args: ModelArgs, weights: dict[str, np.ndarray], tokenizer: Tokenizer | None = None,
                 source: dict | None = None):
        check_weights(args, weights)
        self.config = args
        self.weights = weights
        self.tokenizer = tokenizer
        self.source = source or {}
        self.rope_cos, self.rope_sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)  # (max_seq_len, HD/2)
        if tokenizer is not None and tokenizer.n_words != args.vocab_size:
            raise LlamaNpError(f"tokenizer has {tokenizer.n_words} pieces but the model's vocab_size "
                               f"is {args.vocab_size}")

    def new_cache(self, batch_size: int = 1, max_seq_len: int | None = None) -> KVCache:
        """An empty KV cache for batch_size sequences of up to max_seq_len (default: the context)."""
        return KVCache.allocate(self.config, batch_size, cache_length(self.config, max_seq_len))

    def forward(self, tokens, start_pos: int = 0, cache: KVCache | None = None,
                trace: dict | None = None) -> np.ndarray:
        """Logits for `tokens` (B, T) at positions start_pos .. start_pos+T-1 -> float32 (B, T, V).

        Without a cache (start_pos must then be 0) the sequence is computed from scratch.
        With `trace={}` every intermediate is recorded under a name such as "layers.3.q_rot".
        """
        tokens, cache = forward_inputs(self, tokens, start_pos, cache)
        B, T = tokens.shape
        args, w = self.config, self.weights
        h = gather_rows(w["tok_embeddings.weight"], tokens)          # (B, T, D)
        cos, sin, mask = positions(self.rope_cos, self.rope_sin, start_pos, T)
        record(trace, tok_embeddings=h)
        for i in range(args.n_layers):
            lt = {} if trace is not None else None                       # this layer's trace
            h = h + attention_branch(h, w, i, cache, start_pos, cos, sin, mask, args.norm_eps, lt)  # (B, T, D)
            record(lt, h=h)
            h = h + ffn_branch(h, w, i, args.norm_eps, lt)                                         # (B, T, D)
            record(lt, out=h)
            if lt is not None:
                trace.update({f"layers.{i}.{name}": array for name, array in lt.items()})
        return classifier(h, w, args.norm_eps, trace)                                              # (B, T, V)

    def generate(self, prompt, **kwargs):
        """Complete `prompt` (text, or a list of token ids); returns the new text (or the new ids).
        Keyword arguments: the fields of SamplingParams (max_new_tokens, temperature, top_p, top_k,
        seed), and stop, on_text, stats (generation.generate)."""
        return generation.generate(self, prompt, **kwargs)

    def chat(self, dialog, **kwargs) -> dict:
        """The assistant's answer to a LLaMA 2 chat dialog -> {"role": "assistant", "content": ...}."""
        return chat_module.chat(self, dialog, **kwargs)


def load(model_dir, fp32: str = "auto") -> Llama:
    """Open a converted model directory. The float16 weights are memory-mapped; `fp32` chooses
    what the forward pass computes with (precision.py): "on" = float32 copies of the matrices,
    "off" = the float16 map itself, converted block by block inside each product, "auto" = copies
    when they fit in half of the available RAM."""
    args, weights, config = read_model_dir(model_dir)
    weights = working_weights(weights, fp32)
    tok_path = Path(model_dir) / TOKENIZER_FILE
    tokenizer = Tokenizer(tok_path) if tok_path.exists() else None
    return Llama(args, weights, tokenizer, source=config.get("source"))
