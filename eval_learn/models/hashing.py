"""Content digests of weight files: what makes a cache key change when the weights do."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


def weights_digest(folder: Path) -> str:
    """SHA-256 over each weight file's path and full contents: an edit anywhere in a tensor (say a cross-attention
    layer in the middle of a UNet file) changes it. Each file is read once per process."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.suffix in {".safetensors", ".bin", ".pt", ".ckpt"} and path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a rewritten file is read again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read once per (path, size, modification time)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _sha256(str(resolved), stat.st_size, stat.st_mtime_ns)
