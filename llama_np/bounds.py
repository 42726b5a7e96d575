"""Views into files, made only from numbers that were checked first.

Every reader (`.pth` zips, llama2.c `.bin`, safetensors, the converted directory) builds its
arrays as zero-copy views of a memory-mapped file, from numbers it found *in that file*: offsets,
shapes, strides, element counts. A file is hostile until proven otherwise: a negative offset, a
huge shape whose product wraps around in int64, a stride that walks outside the storage — NumPy's
`as_strided` and `frombuffer(offset=...)` take them without a word and read other memory.
So no reader calls those directly: they call `strided_view` / `flat_view` here, which check that
every number is a plain non-negative integer and that every byte the view can touch lies inside
the buffer, and raise a one-line LlamaNpError otherwise. Products are Python integers
(`math.prod`), which cannot overflow.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import LlamaNpError

MAX_DIMS = 8                      # no LLaMA tensor has more; a file that says 10,000 is lying


def is_index(x) -> bool:
    """A plain non-negative integer (bool is not a count)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0


def checked_shape(shape, what: str) -> tuple[int, ...]:
    """A shape from a file: a short sequence of non-negative integers -> tuple of Python ints."""
    if not isinstance(shape, (tuple, list)) or len(shape) > MAX_DIMS or not all(is_index(n) for n in shape):
        raise LlamaNpError(f"{what}: bad shape {shape!r:.80}")
    return tuple(int(n) for n in shape)


def strided_view(base: np.ndarray, offset: int, shape, strides, what: str) -> np.ndarray:
    """A read-only view of the 1-d array `base` starting at element `offset`, with `shape` and
    `strides` in elements — after proving that every element it can reach lies inside `base`."""
    assert base.ndim == 1, f"strided_view: base must be 1-d, got {base.shape}"
    shape = checked_shape(shape, what)
    if not isinstance(strides, (tuple, list)) or len(strides) != len(shape) or not all(is_index(s) for s in strides):
        raise LlamaNpError(f"{what}: bad strides {strides!r:.80} for shape {shape}")
    if not is_index(offset):
        raise LlamaNpError(f"{what}: bad storage offset {offset!r:.40}")
    strides, offset = tuple(int(s) for s in strides), int(offset)
    span = 0 if 0 in shape else 1 + sum((n - 1) * s for n, s in zip(shape, strides))   # elements touched
    if offset + span > base.size:
        raise LlamaNpError(f"{what}: a tensor of shape {shape} at offset {offset} runs past the end of its "
                           f"storage of {base.size} elements (file truncated or corrupt)")
    if span == 0:
        return np.zeros(shape, base.dtype)
    itemsize = base.dtype.itemsize
    return np.lib.stride_tricks.as_strided(base[offset:offset + span], shape=shape,
                                           strides=[s * itemsize for s in strides], writeable=False)


def flat_view(buffer, dtype, byte_offset: int, count: int, what: str) -> np.ndarray:
    """`count` elements of `dtype` at `byte_offset` of a bytes-like buffer (an mmap), checked in bounds."""
    dtype = np.dtype(dtype)
    if not (is_index(byte_offset) and is_index(count)):
        raise LlamaNpError(f"{what}: bad offset {byte_offset!r:.40} or element count {count!r:.40}")
    if int(byte_offset) + int(count) * dtype.itemsize > len(buffer):
        raise LlamaNpError(f"{what}: {count} elements at byte {byte_offset} run past the end of the file "
                           f"({len(buffer)} bytes): truncated or corrupt")
    if count == 0:
        return np.zeros(0, dtype)
    return np.frombuffer(buffer, dtype=dtype, count=int(count), offset=int(byte_offset))


def n_elements(shape) -> int:
    """The product of a shape, as a Python integer (never wraps around)."""
    return math.prod(int(n) for n in shape)
