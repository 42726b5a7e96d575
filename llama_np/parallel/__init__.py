"""Tensor parallelism: LLaMA 2 split over N ranks the way Meta's model-parallel reference splits it.

    split.py        which slice of each tensor rank k of N owns (Meta's fairscale split; int8 scales)
    ranks.py        the rank directories OUT_DIR/rank-KK-of-NN: write, find, read, check
    rank.py         one rank's part of the forward pass (model.py's functions on its arrays) and the sums
    llama.py        TensorParallelLlama, the model over N ranks with llama_np.Llama's interface
    ray_backend.py  the ranks as Ray actors, one per node: the only module that imports ray

    llama-np convert SRC OUT_DIR --tensor-parallel N
    llama-np generate|chat|perplexity OUT_DIR --tensor-parallel N [--ray ADDRESS]

Ray is an optional extra (`pip install "llama_np[ray]"`); nothing here imports it until ranks are
started on it.
"""
from __future__ import annotations

from ..errors import LlamaNpError

INSTALL_RAY = 'pip install "llama_np[ray]"'


def open_tensor_parallel(model_dir, world_size: int, address: str | None = None, fp32: str = "auto", **options):
    """The model of MODEL_DIR's N rank directories, each rank a Ray actor: on a local Ray instance
    (address None), or one per node of the Ray cluster at `address` (ray_backend.open_ray)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise LlamaNpError(f"--tensor-parallel must be a positive number of ranks, got {world_size!r}")
    try:
        from .ray_backend import open_ray
    except ModuleNotFoundError as e:
        if e.name != "ray" and not (e.name or "").startswith("ray."):
            raise
        raise LlamaNpError(f"--tensor-parallel runs its ranks on Ray, which is not installed: {INSTALL_RAY}") from None
    return open_ray(model_dir, world_size, address=address, fp32=fp32, **options)
