"""`llama-np verify DIR`: is this download, or this converted model, what it claims to be?

    a Meta download     its checklist.chk lists the md5 of every file ("<md5>  <name>" per line,
                        the output of `md5sum`); tokenizer_checklist.chk beside it, likewise
    a converted dir     convert recorded in config.json a sha256 of the safetensors header, of
                        each tensor's bytes and of tokenizer.model

The first file or tensor that differs is named in a one-line error. Hashing reads every byte
once, in 16 MB chunks (hashlib releases the GIL), with a progress bar.
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

from tqdm import tqdm

from .config import read_json
from .errors import LlamaNpError

CHECKLISTS = ("checklist.chk", "tokenizer_checklist.chk")
CHUNK = 16 << 20


def digest(path: Path, algorithm: str, bar: tqdm, start: int = 0, length: int | None = None) -> str:
    """The hex digest of `length` bytes of `path` from byte `start` (default: to the end)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left is None or left > 0:
            chunk = f.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            bar.update(len(chunk))
            left = None if left is None else left - len(chunk)
    return h.hexdigest()


def read_checklist(path: Path) -> dict[str, str]:
    """checklist.chk -> {file name: md5}; names may not leave the directory."""
    entries = {}
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{32}) [ *](.+)", line.strip())
        if m is None or "/" in m.group(2) or m.group(2) in (".", ".."):
            raise LlamaNpError(f"{path}: line {i + 1} is not '<md5>  <file name>': {line[:80]!r}")
        entries[m.group(2)] = m.group(1).lower()
    if not entries:
        raise LlamaNpError(f"{path}: lists no files")
    return entries


def verify_meta(src: Path, progress: bool = True) -> int:
    """Check a Meta download against its checklists -> the number of files checked."""
    lists = [src / name for name in CHECKLISTS if (src / name).is_file()]
    if not lists:
        raise LlamaNpError(f"{src}: no checklist.chk to verify against")
    expected = {src / name: md5 for chk in lists for name, md5 in read_checklist(chk).items()}
    for path in expected:
        if not path.is_file():
            raise LlamaNpError(f"{path}: listed in the checklist but missing")
    total = sum(p.stat().st_size for p in expected)
    with tqdm(total=total, unit="B", unit_scale=True, desc="md5", disable=None if progress else True, leave=False) as bar:
        for path, md5 in expected.items():
            got = digest(path, "md5", bar)
            if got != md5:
                raise LlamaNpError(f"{path}: md5 {got} does not match the checklist's {md5} (corrupt or "
                                   f"incomplete download)")
    return len(expected)


def verify_converted(model_dir: Path, progress: bool = True) -> int:
    """Check a converted directory against the checksums convert recorded -> tensors + files checked."""
    config = read_json(model_dir / "config.json")
    sums = config.get("checksums")
    if not isinstance(sums, dict) or not isinstance(sums.get("model.safetensors"), dict):
        raise LlamaNpError(f"{model_dir}/config.json: no checksums recorded (converted by an older llama_np?)")
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise LlamaNpError(f"{weights}: not found")
    recorded = sums["model.safetensors"]
    with open(weights, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
    if not 0 < n <= weights.stat().st_size - 8:
        raise LlamaNpError(f"{weights}: not a safetensors file (bad header length)")
    size = weights.stat().st_size + sum((model_dir / name).stat().st_size for name in sums
                                        if name != "model.safetensors" and (model_dir / name).is_file())
    with tqdm(total=size, unit="B", unit_scale=True, desc="sha256", disable=None if progress else True, leave=False) as bar:
        if digest(weights, "sha256", bar, 0, 8 + n) != recorded.get("header"):
            raise LlamaNpError(f"{weights}: its header differs from the one convert wrote")
        with open(weights, "rb") as f:
            f.seek(8)
            header = json.loads(f.read(n))            # intact: its checksum matched
        for name, want in recorded.get("tensors", {}).items():
            if name not in header:
                raise LlamaNpError(f"{model_dir}/config.json: a checksum for {name!r}, which the file does not hold")
            begin, end = header[name]["data_offsets"]
            if digest(weights, "sha256", bar, 8 + n + begin, end - begin) != want:
                raise LlamaNpError(f"{weights}: tensor {name!r} differs from what convert wrote")
        for name, want in sums.items():
            if name == "model.safetensors":
                continue
            if not (model_dir / name).is_file():
                raise LlamaNpError(f"{model_dir / name}: missing")
            if digest(model_dir / name, "sha256", bar) != want:
                raise LlamaNpError(f"{model_dir / name}: differs from what convert wrote")
    return len(recorded.get("tensors", {})) + len(sums) - 1


def verify(path, progress: bool = True) -> str:
    """Verify a Meta download or a converted directory -> a one-line summary (LlamaNpError if not)."""
    path = Path(path)
    if not path.is_dir():
        raise LlamaNpError(f"{path}: not a directory")
    if any((path / name).is_file() for name in CHECKLISTS):
        return f"{path}: {verify_meta(path, progress)} files match their checklist md5"
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return f"{path}: {verify_converted(path, progress)} tensors and files match their recorded sha256"
    raise LlamaNpError(f"{path}: neither a Meta download with checklist.chk nor a converted model directory")
