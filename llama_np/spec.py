"""The tensor spec: every tensor of a LLaMA 2 model, its shape, and how Meta's shards cut it.

One table for everything that needs to know the tensors: the converters (which check a
checkpoint against it and merge Meta's model-parallel shards along `shard_axis`), the converted
directory (written and read back in this order), `Llama` (which validates its weights against it
when it is built) and tensor-parallel ranks (which cut along the same axes).

Meta's download is cut for model parallelism with fairscale's layers, and `shard_axis` says how:

    tok_embeddings  ParallelEmbedding      split along the model width       axis 1
    wq wk wv w1 w3  ColumnParallelLinear   split the output rows              axis 0
    output          ColumnParallelLinear   split the vocabulary rows          axis 0
    wo w2           RowParallelLinear      split the input columns            axis 1
    norms           replicated             every shard holds the whole        None
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .config import ModelArgs

# name without "layers.{i}." -> the axis Meta's model-parallel shards split it along (None: whole)
SHARD_AXIS = {
    "tok_embeddings.weight": 1,
    "attention_norm.weight": None,
    "attention.wq.weight": 0,
    "attention.wk.weight": 0,
    "attention.wv.weight": 0,
    "attention.wo.weight": 1,
    "ffn_norm.weight": None,
    "feed_forward.w1.weight": 0,
    "feed_forward.w2.weight": 1,
    "feed_forward.w3.weight": 0,
    "norm.weight": None,
    "output.weight": 0,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str                       # Meta's name, e.g. "layers.3.attention.wq.weight"
    shape: tuple[int, ...]
    shard_axis: int | None          # the axis Meta's shards split it along; None: replicated

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2


def base_name(name: str) -> str:
    """"layers.3.attention.wq.weight" -> "attention.wq.weight"; other names unchanged."""
    return re.sub(r"^layers\.\d+\.", "", name)


def scale_name(name: str) -> str:
    """Where an int8 matrix keeps its float32 per-row scales: "output.weight" -> "output.weight_scale".

    The scales belong to the matrix's rows (axis 0): a split along axis 0 cuts them with the rows,
    a split along axis 1 leaves every piece all of them."""
    return name + "_scale"


def tensor_specs(args: ModelArgs) -> dict[str, TensorSpec]:
    """Every tensor of a LLaMA 2 model with Meta's names, in Meta's order."""
    D, F, V, HD = args.dim, args.hidden_dim, args.vocab_size, args.head_dim
    H, KVH = args.n_heads, args.n_kv_heads
    layer_shapes = {
        "attention_norm.weight": (D,),
        "attention.wq.weight": (H * HD, D),
        "attention.wk.weight": (KVH * HD, D),
        "attention.wv.weight": (KVH * HD, D),
        "attention.wo.weight": (D, H * HD),
        "ffn_norm.weight": (D,),
        "feed_forward.w1.weight": (F, D),
        "feed_forward.w2.weight": (D, F),
        "feed_forward.w3.weight": (F, D),
    }
    names_shapes = [("tok_embeddings.weight", (V, D))]
    for i in range(args.n_layers):
        names_shapes += [(f"layers.{i}.{base}", shape) for base, shape in layer_shapes.items()]
    names_shapes += [("norm.weight", (D,)), ("output.weight", (V, D))]
    return {name: TensorSpec(name, shape, SHARD_AXIS[base_name(name)]) for name, shape in names_shapes}


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor, in Meta's order."""
    return {name: spec.shape for name, spec in tensor_specs(args).items()}
