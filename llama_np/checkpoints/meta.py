"""Meta's LLaMA 2 download: params.json + consolidated.NN.pth (model-parallel shards) + tokenizer.model.

Meta split each tensor across NN shards for model parallelism (fairscale's Column/Row
ParallelLinear and ParallelEmbedding); we merge them back along the axes spec.SHARD_AXIS names
(or, converting for NN tensor-parallel ranks, keep each shard as its rank: parallel/ranks.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ModelArgs, foreign_values, read_json
from ..errors import LlamaNpError
from ..spec import SHARD_AXIS, base_name, expected_shapes
from .pth import load_pth_state_dict

IGNORED = {"rope.freqs"}                 # Meta's precomputed rotary frequencies; we compute our own


def is_meta_dir(path: Path) -> bool:
    return path.is_dir() and (path / "params.json").is_file() and any(path.glob("consolidated.*.pth"))


def shard_files(src: Path) -> list[Path]:
    """consolidated.00.pth, consolidated.01.pth, ...: one per model-parallel rank of Meta's reference."""
    return sorted(src.glob("consolidated.*.pth"))


def read_meta(src: Path, tokenizer_vocab_size: int | None, max_seq_len: int | None = None):
    """-> (ModelArgs, [(name, load)]) where load() merges the shards of one tensor (float32)."""
    args, shards = read_meta_shards(src, tokenizer_vocab_size, max_seq_len)
    return args, [(n, _merger(n, [shard[n] for shard in shards])) for n in shards[0]]


def read_meta_shards(src: Path, tokenizer_vocab_size: int | None, max_seq_len: int | None = None):
    """-> (ModelArgs, [shard: name -> LazyTensor], one per consolidated.NN.pth in order), every
    shape checked (the shards merged along spec.SHARD_AXIS give the model params.json describes)
    before any data is read. Meta's rope.freqs is dropped."""
    params = read_json(src / "params.json")
    shard_paths = shard_files(src)
    if not shard_paths:
        raise LlamaNpError(f"{src}: no consolidated.NN.pth files")
    with foreign_values(src / "params.json"):
        args = ModelArgs.from_meta_params(params, tokenizer_vocab_size, max_seq_len)
    shards = [load_pth_state_dict(p) for p in shard_paths]
    for path, shard in zip(shard_paths[1:], shards[1:]):
        if set(shard) != set(shards[0]):
            diff = sorted(set(shard) ^ set(shards[0]))
            raise LlamaNpError(f"{path}: its tensors differ from {shard_paths[0].name}'s (e.g. {diff[0]!r})")
    shapes = expected_shapes(args)
    names = [n for n in shards[0] if n not in IGNORED]
    for name in names:  # check every shape before any data is read or written
        _check_merge(name, [shard[name] for shard in shards], shard_paths, shapes)
    return args, [{n: shard[n] for n in names} for shard in shards]


def _check_merge(name, parts, shard_paths, shapes):
    axis = SHARD_AXIS.get(base_name(name), "unknown")
    if axis == "unknown" or name not in shapes:
        raise LlamaNpError(f"{shard_paths[0]}: unexpected tensor {name!r}")
    for path, part in zip(shard_paths, parts):
        if not hasattr(part, "numpy"):
            raise LlamaNpError(f"{path}: {name!r} is not a tensor")
    if axis is None:
        merged = parts[0].shape
    elif all(len(p.shape) == len(shapes[name]) for p in parts):
        merged = tuple(sum(p.shape[axis] for p in parts) if i == axis else parts[0].shape[i]
                       for i in range(len(shapes[name])))
    else:
        merged = None
    if merged != shapes[name]:
        got = " + ".join(str(tuple(p.shape)) for p in parts)
        how = "" if axis is None else f" merged along axis {axis}"
        raise LlamaNpError(f"tensor {name!r}: shard shapes {got}{how} do not give {shapes[name]}, "
                           f"the shape params.json implies")


def _merger(name, parts):
    """load() for one tensor: the shards concatenated along the axis Meta split them on."""
    axis = SHARD_AXIS[base_name(name)]
    if axis is None:
        return parts[0].numpy
    def load():
        merged = np.concatenate([p.numpy() for p in parts], axis=axis)
        for p in parts:
            p.release()
        return merged
    return load
