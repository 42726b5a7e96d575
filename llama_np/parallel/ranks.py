"""Tensor-parallel rank directories: write them, find them, read one back, check they belong together.

    OUT_DIR/rank-00-of-NN/   a complete converted directory of rank 0's slices:
        config.json          the WHOLE model's ModelArgs (and weight_type, source, ...) plus
                             "tensor_parallel": {"rank": 0, "world_size": NN}
        model.safetensors    rank 0's piece of every tensor (split.py), under Meta's names
        tokenizer.model      when the source had one
    OUT_DIR/rank-01-of-NN/   ...

Each rank directory is memory-mapped on its own by the process that runs that rank, so a node
needs only its own directory (copy rank k to node k, or put OUT_DIR on a shared filesystem).
The whole OUT_DIR is written under a temporary name and renamed at the end: it appears complete
or not at all. Three ways in (all one tensor at a time):

    a Meta download with exactly N shards   consolidated.KK.pth becomes rank KK as it is: no merge,
                                            each tensor only rounded to float16 as every conversion
    any other checkpoint (or N)             each whole tensor is cut into its N pieces
    a converted llama_np directory          the same cut, the stored bytes kept (float16 or int8)
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..config import ModelArgs, read_json
from ..errors import LlamaNpError
from ..pages import drop_pages
from ..spec import expected_shapes
from ..atomic import atomic_output_dir
from ..weights import (CONFIG_FILE, SAFETENSORS_DTYPE_NAMES, TOKENIZER_FILE, WEIGHTS_FILE, SafetensorsWriter,
                       read_model_dir, to_float16, write_config)
from .split import check_world_size, full_shapes, rank_part, rank_shape, rank_shapes, shard_axis

TP_KEY = "tensor_parallel"           # config.json: {"rank": k, "world_size": N}


def rank_dir_name(k: int, n: int) -> str:
    """"rank-03-of-08": rank k of n."""
    return f"rank-{k:02d}-of-{n:02d}"


# ---------------------------------------------------------------------------------------- writing
def write_rank_dirs(out_dir, n: int, configs: list[dict], entries: dict[str, tuple[str, tuple[int, ...]]],
                    tensors, tokenizer_path=None, progress: bool = True) -> Path:
    """Write OUT_DIR/rank-KK-of-NN/ for k < n, atomically.

    entries: name -> (safetensors dtype, WHOLE shape) of every tensor; tensors yields (name, pieces)
    where pieces() returns that tensor's n pieces in rank order, each of its entry's dtype and of
    its rank's shape; configs[k] is rank k's config.json (the tensor_parallel key is added here).
    """
    rank_entries = {name: (dtype, rank_shape(shape, shard_axis(name), n)) for name, (dtype, shape) in entries.items()}
    with atomic_output_dir(out_dir) as tmp:
        dirs = [tmp / rank_dir_name(k, n) for k in range(n)]
        for d in dirs:
            d.mkdir()
        writers = [SafetensorsWriter(d / WEIGHTS_FILE, rank_entries) for d in dirs]
        with tqdm(total=len(entries), desc=f"converting into {n} ranks", unit="tensor", disable=None if progress else True,
                  leave=False) as bar:
            for name, pieces in tensors:
                if name not in entries:
                    raise LlamaNpError(f"unexpected tensor {name!r} in the checkpoint")
                if name in writers[0].written:
                    raise LlamaNpError(f"tensor {name!r} appears twice in the checkpoint")
                for k, (writer, piece) in enumerate(zip(writers, pieces(), strict=True)):
                    shape = rank_entries[name][1]
                    if tuple(piece.shape) != shape:
                        raise LlamaNpError(f"tensor {name!r}: rank {k}'s piece has shape {tuple(piece.shape)}, "
                                           f"expected {shape} (the whole tensor cut evenly in {n})")
                    writer.write(name, piece)
                    drop_pages(piece)
                bar.update(1)
        checksums = [writer.finish("checkpoint") for writer in writers]
        for k, d in enumerate(dirs):
            write_config(d, {**configs[k], TP_KEY: {"rank": k, "world_size": n}}, tokenizer_path, checksums[k])
    return Path(out_dir)


def write_split(out_dir, n: int, args: ModelArgs, tensors, source: dict, tokenizer_path=None,
                progress: bool = True) -> Path:
    """Any checkpoint's whole tensors [(name, load)] -> n rank directories (float16), cut while streaming."""
    check_world_size(args, n)
    shapes = expected_shapes(args)

    def pieces(name, load):
        array = load()
        if tuple(array.shape) != shapes[name]:
            raise LlamaNpError(f"tensor {name!r} has shape {tuple(array.shape)}, expected {shapes[name]} "
                               f"from the model's config")
        whole = to_float16(name, array)
        drop_pages(array)
        return [rank_part(name, whole, k, n) for k in range(n)]

    entries = {name: ("F16", shape) for name, shape in shapes.items()}
    return write_rank_dirs(out_dir, n, [{**args.to_dict(), "source": source}] * n, entries,
                           ((name, lambda name=name, load=load: pieces(name, load)) for name, load in tensors),
                           tokenizer_path, progress)


def write_meta_shards(out_dir, args: ModelArgs, shards: list[dict], source: dict, shard_names: list[str],
                      tokenizer_path=None, progress: bool = True) -> Path:
    """Meta's N shards -> N rank directories, shard k as rank k: no merge, each tensor rounded to float16."""
    n = len(shards)
    check_world_size(args, n)

    def pieces(name):
        out = [to_float16(name, shard[name].numpy()) for shard in shards]
        for shard in shards:
            shard[name].release()
        return out

    entries = {name: ("F16", shape) for name, shape in expected_shapes(args).items()}
    configs = [{**args.to_dict(), "source": {**source, "shard": shard_name}} for shard_name in shard_names]
    return write_rank_dirs(out_dir, n, configs, entries, ((name, lambda name=name: pieces(name)) for name in shards[0]),
                           tokenizer_path, progress)


def split_model_dir(src, out_dir, n: int, progress: bool = True) -> Path:
    """A converted directory (float16, or int8 rows with their scales) -> n rank directories, every
    tensor cut by split.py's rule with its stored bytes kept."""
    src = Path(src)
    args, weights, config = read_model_dir(src, join_scales=False)     # int8 rows and their scales as stored
    check_world_size(args, n)
    shapes = full_shapes(args, weights)              # refuses a tensor that has no rule
    entries = {}
    for name, w in weights.items():
        if tuple(w.shape) != shapes[name] or w.dtype not in SAFETENSORS_DTYPE_NAMES:
            raise LlamaNpError(f"{src / WEIGHTS_FILE}: tensor {name!r} is {w.dtype} {tuple(w.shape)}; expected "
                               f"{shapes[name]} of float16, float32 or int8")
        entries[name] = (SAFETENSORS_DTYPE_NAMES[w.dtype], shapes[name])
    tok = src / TOKENIZER_FILE
    pieces = ((name, lambda name=name, w=w: [rank_part(name, w, k, n) for k in range(n)]) for name, w in weights.items())
    return write_rank_dirs(out_dir, n, [{**config, "split_from": str(src.resolve())}] * n, entries, pieces,
                           tok if tok.is_file() else None, progress)


# ---------------------------------------------------------------------------------------- reading
def find_rank_dirs(model_dir, n: int) -> list[Path]:
    """MODEL_DIR/rank-KK-of-NN for k < n, each present (on this machine), or a one-line error."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LlamaNpError(f"{model_dir}: not found (expected the directory `llama-np convert ... "
                           f"--tensor-parallel {n}` wrote)")
    paths = [model_dir / rank_dir_name(k, n) for k in range(n)]
    missing = [p for p in paths if not p.is_dir()]
    if not missing:
        return paths
    others = sorted(p.name for p in model_dir.glob("rank-*-of-*") if p.is_dir())
    if len(missing) == n and others:
        made_for = others[0].rsplit("-of-", 1)[-1].lstrip("0")
        raise LlamaNpError(f"{model_dir}: its ranks were made for {made_for} ranks ({others[0]}), not {n}; "
                           f"run it with --tensor-parallel {made_for} or convert again")
    if len(missing) == n and (model_dir / CONFIG_FILE).is_file():
        raise LlamaNpError(f"{model_dir}: a single-process model directory, not tensor-parallel ranks; split it "
                           f"with `llama-np convert {model_dir} OUT_DIR --tensor-parallel {n}`")
    k = paths.index(missing[0])
    raise LlamaNpError(f"{missing[0]}: missing (rank {k} of {n})")


def read_rank_dir(path, k: int, n: int):
    """(whole model's ModelArgs, name -> memory-mapped piece, config) of rank k of n, every tensor
    checked to be a tensor of the model with its rank-k shape."""
    path = Path(path)
    if not path.is_dir():
        raise LlamaNpError(f"{path}: missing (rank {k} of {n})")
    tp = read_json(path / CONFIG_FILE).get(TP_KEY)
    if tp != {"rank": k, "world_size": n}:
        found = f"rank {tp['rank']} of {tp['world_size']}" if isinstance(tp, dict) and set(tp) == {"rank", "world_size"} \
            else "no rank at all (not a tensor-parallel rank directory)"
        raise LlamaNpError(f"{path}: its config.json says {found}, expected rank {k} of {n}")
    def shapes_of(args: ModelArgs, _config: dict) -> dict:
        check_world_size(args, n)                # a config.json edited to a shape N does not divide
        return rank_shapes(args, n)

    args, weights, config = read_model_dir(path, shapes_of=shapes_of)
    for name, shape in rank_shapes(args, n, weights).items():     # the scales and anything else it holds
        if tuple(weights[name].shape) != shape:
            raise LlamaNpError(f"{path / WEIGHTS_FILE}: tensor {name!r} has shape {tuple(weights[name].shape)}, "
                               f"rank {k} of {n} holds {shape}")
    return args, weights, config


@dataclass(frozen=True)
class RankInfo:
    """What a rank's directory says about the model it belongs to (compared across ranks)."""
    rank: int
    world_size: int
    path: str
    args: dict                   # the whole model's ModelArgs
    weight_type: str
    replicated_sha256: str       # of the tensors every rank holds whole (the norms): equal in every rank
    tokenizer_sha256: str | None


def rank_info(path, k: int, n: int, weights=None, config=None) -> RankInfo:
    """Read (or take) rank k's directory and describe it; reads only the small replicated tensors."""
    if weights is None:
        _, weights, config = read_rank_dir(path, k, n)
    digest = hashlib.sha256()
    for name in sorted(weights):
        if shard_axis(name) is None:
            digest.update(name.encode() + weights[name].tobytes())
    tok = Path(path) / TOKENIZER_FILE
    return RankInfo(rank=k, world_size=n, path=str(path), args=ModelArgs.from_dict(config).to_dict(),
                    weight_type=str(config.get("weight_type", "float16")), replicated_sha256=digest.hexdigest(),
                    tokenizer_sha256=hashlib.sha256(tok.read_bytes()).hexdigest() if tok.is_file() else None)


def check_same_model(infos: list[RankInfo]) -> None:
    """Every rank from the same conversion of the same model, or a one-line error naming the odd one."""
    first = infos[0]
    for info in infos[1:]:
        where = f"{info.path} (rank {info.rank})"
        differs = [key for key in first.args if info.args.get(key) != first.args[key]]
        if differs:
            key = differs[0]
            raise LlamaNpError(f"{where}: a different model from rank 0 ({key} {info.args.get(key)} vs "
                               f"{first.args[key]} in {first.path}): ranks from different models")
        if info.weight_type != first.weight_type:
            raise LlamaNpError(f"{where}: {info.weight_type} weights, rank 0 has {first.weight_type}: ranks from "
                               f"different conversions")
        if info.replicated_sha256 != first.replicated_sha256:
            raise LlamaNpError(f"{where}: its norm weights (which every rank holds whole) differ from rank 0's in "
                               f"{first.path}: ranks from different models")
        if info.tokenizer_sha256 != first.tokenizer_sha256:
            raise LlamaNpError(f"{where}: its tokenizer.model differs from rank 0's in {first.path}")
