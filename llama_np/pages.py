"""Memory-mapped pages: let go of the ones we are done with.

Streaming a 13.5 GB checkpoint through a memory map would leave all of it resident in this
process; dropping each tensor's pages once it has been converted keeps the RSS at one tensor.
"""
from __future__ import annotations

import mmap

import numpy as np


def drop_pages(view: np.ndarray) -> None:
    """Unmap the pages of a memory-mapped array from this process once we are done with them.

    The kernel keeps the file's pages in its page cache (a later touch maps them again, reading
    the same bytes); they just stop counting in our RSS. Without this, streaming a 13.5 GB
    checkpoint through a memory map would leave all of it resident. No-op for other arrays.
    """
    base = view
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "_mmap", None) or getattr(base, "base", None)
    if base is None or base.closed or view.size == 0:
        return
    low, high = getattr(np.lib, "array_utils", np).byte_bounds(view)
    start = low - np.frombuffer(base, np.uint8).__array_interface__["data"][0]
    begin = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE          # whole pages inside the view only
    end = (start + high - low) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > begin:
        base.madvise(mmap.MADV_DONTNEED, begin, end - begin)
