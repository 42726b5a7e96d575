"""Which slice of each tensor rank k of N owns: Meta's model-parallel split, in plain NumPy.

Meta's reference runs LLaMA 2 with fairscale's parallel layers, and its download is cut the
same way (spec.SHARD_AXIS):

    wq wk wv w1 w3  ColumnParallelLinear   output rows cut in N            axis 0
    output          ColumnParallelLinear   vocabulary rows cut in N        axis 0
    wo w2           RowParallelLinear      input columns cut in N          axis 1
    tok_embeddings  ParallelEmbedding      model-width columns cut in N    axis 1
    norms           replicated             every rank holds the whole      None

Rank k owns the k-th of N equal, contiguous pieces along that axis (torch.chunk's pieces, which
is what Meta's consolidated.KK.pth hold). Heads are contiguous blocks of HD rows of wq, wk and
wv, so rank k holds H/N whole query heads, h in [k H/N, (k+1) H/N), and KVH/N whole kv heads,
[k KVH/N, (k+1) KVH/N) -- exactly the kv heads its query heads read (query head h reads kv head
h // R, R = H/KVH). Its wo columns are the outputs of its own heads, its w2 columns the outputs
of its own w1/w3 rows: a rank's attention and FFN need nothing from the other ranks until their
partial outputs are summed (the two all-reduces of each layer, see rank.py).

Companion tensors follow their matrix. An int8 directory stores a matrix `X.weight` as int8 rows
and `X.weight_scale`, one float per row (out,); the rule for a scale:
    its matrix cut along axis 0 (rows)      -> the scales are cut with their rows (axis 0)
    its matrix cut along axis 1 (columns)   -> the scales are replicated: every rank holds a piece
                                               of every row, and each piece is scaled by its row's
                                               scale, so sum_k (x_k q_k^T) * s = (x q^T) * s
    its matrix replicated                   -> replicated
"""
from __future__ import annotations

import numpy as np

from ..config import ModelArgs
from ..errors import LlamaNpError
from ..spec import SHARD_AXIS, base_name, expected_shapes

SCALE_SUFFIX = "_scale"             # "X.weight_scale": the per-row scales of the int8 matrix "X.weight"


def shard_axis(name: str) -> int | None:
    """The axis tensor `name` is cut along across ranks (None: every rank holds all of it)."""
    if name.endswith(SCALE_SUFFIX):
        matrix_axis = shard_axis(name[: -len(SCALE_SUFFIX)])
        return 0 if matrix_axis == 0 else None      # scales go with their rows
    axis = SHARD_AXIS.get(base_name(name), "unknown")
    if axis == "unknown":
        raise LlamaNpError(f"tensor {name!r} is not part of a LLaMA model: no rule to split it across ranks")
    return axis


def full_shapes(args: ModelArgs, names) -> dict[str, tuple[int, ...]]:
    """The whole model's shape of each tensor in `names`: the spec's, and (out,) for the scales of an
    (out, in) matrix."""
    spec = expected_shapes(args)
    shapes = {}
    for name in names:
        matrix = name[: -len(SCALE_SUFFIX)] if name.endswith(SCALE_SUFFIX) else None
        if name not in spec and matrix not in spec:
            raise LlamaNpError(f"tensor {name!r} is not part of a {args.n_layers}-layer LLaMA model")
        shapes[name] = spec[name] if matrix is None else spec[matrix][:1]
    return shapes


def check_world_size(args: ModelArgs, n: int) -> None:
    """N must cut every split dimension into equal whole pieces, as Meta's fairscale layers require
    (`ensure_divisibility`). A one-line LlamaNpError otherwise."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise LlamaNpError(f"--tensor-parallel must be a positive number of ranks, got {n!r}")
    reasons = [
        ("n_heads", args.n_heads, "query heads"),
        ("n_kv_heads", args.n_kv_heads, "kv heads (more ranks than kv heads would need kv heads replicated "
                                        "across ranks, which Meta's layout does not do)"),
        ("hidden_dim", args.hidden_dim, "FFN features (rows of w1/w3, columns of w2)"),
        ("vocab_size", args.vocab_size, "vocabulary rows of the classifier"),
        ("dim", args.dim, "embedding columns"),
    ]
    for field, size, what in reasons:
        if size % n:
            raise LlamaNpError(f"{n} ranks do not divide {field} = {size}: every rank must hold an equal "
                               f"share of the {what}")


def rank_slice(shape: tuple[int, ...], axis: int | None, k: int, n: int) -> tuple[slice, ...]:
    """The index of rank k's piece of an array of `shape` cut in n along `axis`."""
    assert 0 <= k < n and (axis is None or shape[axis] % n == 0), f"rank_slice: {shape} axis {axis}, rank {k} of {n}"
    index = [slice(None)] * len(shape)
    if axis is not None:
        size = shape[axis] // n
        index[axis] = slice(k * size, (k + 1) * size)
    return tuple(index)


def rank_shape(shape: tuple[int, ...], axis: int | None, n: int) -> tuple[int, ...]:
    return tuple(size // n if i == axis else size for i, size in enumerate(shape))


def rank_part(name: str, array: np.ndarray, k: int, n: int) -> np.ndarray:
    """Rank k's piece of the whole tensor `name` (a view, no copy)."""
    return array[rank_slice(array.shape, shard_axis(name), k, n)]


def rank_shapes(args: ModelArgs, n: int, names=None) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor (default: every tensor of the spec) in one rank's directory."""
    shapes = full_shapes(args, expected_shapes(args) if names is None else names)
    return {name: rank_shape(shape, shard_axis(name), n) for name, shape in shapes.items()}
