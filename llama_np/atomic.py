"""An output directory that appears whole or not at all.

`with atomic_output_dir(OUT_DIR) as tmp:` — everything is written into `tmp`, a sibling named
`.OUT_DIR.partial`, which is renamed to OUT_DIR only when the block ends without an error.

    killed (SIGKILL, power cut)   OUT_DIR never appears; `.OUT_DIR.partial` stays behind, and the
                                  next run into OUT_DIR removes it (it can tell a dead run's
                                  leftovers from a live run: the live one holds a lock on it)
    Ctrl-C, any error             the partial directory is removed, the error goes on
    the disk fills up             one line naming OUT_DIR and saying the disk is full
    two runs into one OUT_DIR     the second finds the first's lock and stops with a clear error;
                                  the first completes

The lock is an flock on `.OUT_DIR.partial/.lock`, held for the whole write; the kernel releases
it when the process dies, however it dies.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import LlamaNpError

LOCK_FILE = ".lock"
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def check_output_dir(out_dir: Path) -> None:
    """OUT_DIR must not exist yet, or be an empty directory."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LlamaNpError(f"{out_dir}: output directory exists and is not empty")


def _claim(tmp: Path, out_dir: Path) -> int:
    """Create `tmp` and lock it -> the lock's file descriptor. A dead run's leftover is removed;
    a live run's is refused."""
    for _ in range(2):
        try:
            tmp.mkdir()
        except FileExistsError:
            try:
                fd = os.open(tmp / LOCK_FILE, os.O_RDWR)
            except FileNotFoundError:          # being created or renamed by a live run this instant
                raise LlamaNpError(f"{out_dir}: another conversion into it is running") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LlamaNpError(f"{out_dir}: another conversion into it is running "
                                   f"(its partial output is {tmp})") from None
            shutil.rmtree(tmp, ignore_errors=True)   # a killed run's leftovers: nobody holds them
            os.close(fd)
            continue
        fd = os.open(tmp / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd
    raise LlamaNpError(f"{out_dir}: could not claim {tmp}; another conversion into it is running")


@contextmanager
def atomic_output_dir(out_dir):
    """Yield a temporary directory that becomes `out_dir` when the block succeeds (see above)."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.parent / f".{out_dir.name}.partial"
        fd = _claim(tmp, out_dir)
    except OSError as e:
        raise LlamaNpError(f"{out_dir}: cannot create the output directory ({e.strerror})") from None
    try:
        try:
            yield tmp
            check_output_dir(out_dir)             # nobody made it meanwhile
            os.unlink(tmp / LOCK_FILE)
            if out_dir.exists():
                out_dir.rmdir()                   # empty, checked just above
            os.rename(tmp, out_dir)
        except OSError as e:
            if e.errno in DISK_FULL:
                raise LlamaNpError(f"{out_dir}: the disk is full ({e.strerror}); nothing was written") from None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)
