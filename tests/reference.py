"""Independent references for the tests, written with PyTorch and Hugging Face transformers.

Nothing here imports llama_np's math: checkpoints are written the way Meta's code writes them
(torch.save of bf16 state dicts, one per model-parallel shard), and logits come from
transformers' LlamaForCausalLM.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

# How Meta's fairscale layers split each tensor over model-parallel shards (the axis of the
# split), as in llama/model.py: ColumnParallelLinear splits output rows (0), RowParallelLinear
# and ParallelEmbedding split columns (1); norms are replicated (None).
META_SPLIT = {"tok_embeddings": 1, "wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w2": 1, "w3": 0,
              "output": 0, "attention_norm": None, "ffn_norm": None, "norm": None}


def _split_axis(name: str):
    """"layers.3.attention.wq.weight" -> META_SPLIT["wq"]"""
    return META_SPLIT[re.sub(r"^layers\.\d+\.(attention\.|feed_forward\.)?", "", name).removesuffix(".weight")]


def random_meta_weights(dim, n_layers, n_heads, n_kv_heads, vocab_size, hidden_dim, seed=0,
                        dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """A random LLaMA state dict with Meta's names (full, unsharded), in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    hd = dim // n_heads

    def w(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / shape[-1] ** 0.5
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    sd = {"tok_embeddings.weight": w(vocab_size, dim, scale=1.0)}
    for i in range(n_layers):
        p = f"layers.{i}."
        sd[p + "attention.wq.weight"] = w(n_heads * hd, dim)
        sd[p + "attention.wk.weight"] = w(n_kv_heads * hd, dim)
        sd[p + "attention.wv.weight"] = w(n_kv_heads * hd, dim)
        sd[p + "attention.wo.weight"] = w(dim, n_heads * hd)
        sd[p + "feed_forward.w1.weight"] = w(hidden_dim, dim)
        sd[p + "feed_forward.w2.weight"] = w(dim, hidden_dim)
        sd[p + "feed_forward.w3.weight"] = w(hidden_dim, dim)
        sd[p + "attention_norm.weight"] = (1 + 0.1 * torch.randn(dim, generator=g)).to(dtype)
        sd[p + "ffn_norm.weight"] = (1 + 0.1 * torch.randn(dim, generator=g)).to(dtype)
    sd["norm.weight"] = (1 + 0.1 * torch.randn(dim, generator=g)).to(dtype)
    sd["output.weight"] = w(vocab_size, dim)
    return sd


def write_meta_checkpoint(out: Path, params: dict, weights: dict[str, torch.Tensor], n_shards: int = 1,
                          rope_theta_for_freqs: float = 10000.0) -> Path:
    """Write params.json and consolidated.NN.pth exactly as Meta's download has them."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").write_text(json.dumps(params))
    dim, n_heads = params["dim"], params["n_heads"]
    hd = dim // n_heads
    rope_freqs = 1.0 / (rope_theta_for_freqs ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    for s in range(n_shards):
        shard = {}
        for name, t in weights.items():
            axis = _split_axis(name)
            shard[name] = t.clone() if axis is None else torch.chunk(t, n_shards, dim=axis)[s].clone()
        shard["rope.freqs"] = rope_freqs.to(torch.bfloat16)
        torch.save(shard, out / f"consolidated.{s:02d}.pth")
    return out


def meta_to_hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved rotary rows -> Hugging Face's half-split rows (from HF's
    convert_llama_weights_to_hf.py). Within each head, rows (0,1),(2,3),... are Meta's pairs;
    HF wants pair i at rows (i, i + HD/2): view (heads, HD/2, 2, in) and swap the middle axes."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_llama(weights: dict[str, torch.Tensor], *, dim, n_layers, n_heads, n_kv_heads, vocab_size,
             hidden_dim, norm_eps=1e-5, rope_theta=10000.0, max_seq_len=512, round_to_fp16=True):
    """transformers' LlamaForCausalLM (float32, eager attention) holding Meta-named weights.

    With round_to_fp16 the weights are first rounded to float16 by torch, as our converted
    format stores them, so both sides compute with the same numbers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=dim, intermediate_size=hidden_dim,
                         num_hidden_layers=n_layers, num_attention_heads=n_heads,
                         num_key_value_heads=n_kv_heads, rms_norm_eps=norm_eps, rope_theta=rope_theta,
                         max_position_embeddings=max_seq_len, tie_word_embeddings=False,
                         attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()

    def t(name):
        x = weights[name]
        return (x.half() if round_to_fp16 else x).float()

    sd = {"model.embed_tokens.weight": t("tok_embeddings.weight"), "model.norm.weight": t("norm.weight"),
          "lm_head.weight": t("output.weight")}
    for i in range(n_layers):
        m, p = f"model.layers.{i}.", f"layers.{i}."
        sd[m + "self_attn.q_proj.weight"] = meta_to_hf_permute(t(p + "attention.wq.weight"), n_heads)
        sd[m + "self_attn.k_proj.weight"] = meta_to_hf_permute(t(p + "attention.wk.weight"), n_kv_heads)
        sd[m + "self_attn.v_proj.weight"] = t(p + "attention.wv.weight")
        sd[m + "self_attn.o_proj.weight"] = t(p + "attention.wo.weight")
        sd[m + "mlp.gate_proj.weight"] = t(p + "feed_forward.w1.weight")
        sd[m + "mlp.down_proj.weight"] = t(p + "feed_forward.w2.weight")
        sd[m + "mlp.up_proj.weight"] = t(p + "feed_forward.w3.weight")
        sd[m + "input_layernorm.weight"] = t(p + "attention_norm.weight")
        sd[m + "post_attention_layernorm.weight"] = t(p + "ffn_norm.weight")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    """Full-sequence float32 logits (B, T, V) from the reference, no cache."""
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long), use_cache=False).logits.numpy()


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref|: the tolerance measure of the logit comparisons."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours.astype(np.float64) - ref)) / np.max(np.abs(ref)))


# ---- Hugging Face checkpoints (issue 3) -------------------------------------------------------

def random_hf_llama(seed=0, **config):
    """A float32 LlamaForCausalLM with every parameter random (norms near 1), eager attention.

    transformers' own init leaves the norms at exactly 1, which would hide a swapped norm."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(attn_implementation="eager", **config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5 if "embed" not in name else 1.0))
    return model


def hf_from_pretrained_fp16_rounded(path):
    """transformers reads the checkpoint itself; weights rounded to float16 (as our converted
    format stores them) and computed in float32."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def hf_to_meta_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of meta_to_hf_permute: HF's half-split rows -> Meta's interleaved rows."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


HF_LAYER_TO_META = {"input_layernorm": "attention_norm", "self_attn.q_proj": "attention.wq",
                    "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
                    "self_attn.o_proj": "attention.wo", "post_attention_layernorm": "ffn_norm",
                    "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
                    "mlp.up_proj": "feed_forward.w3"}


def hf_state_to_meta(model) -> dict[str, torch.Tensor]:
    """A LlamaForCausalLM's weights with Meta's names and rotary layout (q with n_heads, k with n_kv_heads)."""
    c = model.config
    sd = {"tok_embeddings.weight": model.model.embed_tokens.weight, "norm.weight": model.model.norm.weight,
          "output.weight": model.lm_head.weight}
    for i in range(c.num_hidden_layers):
        for hf_name, meta_name in HF_LAYER_TO_META.items():
            w = model.get_parameter(f"model.layers.{i}.{hf_name}.weight")
            if hf_name == "self_attn.q_proj":
                w = hf_to_meta_permute(w, c.num_attention_heads)
            elif hf_name == "self_attn.k_proj":
                w = hf_to_meta_permute(w, c.num_key_value_heads)
            sd[f"layers.{i}.{meta_name}.weight"] = w
    return {k: v.detach().clone() for k, v in sd.items()}
