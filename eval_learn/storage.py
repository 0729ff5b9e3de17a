"""Files that must never look finished when they are not: atomic writes, digests, and locks between processes.

Every file eval_learn writes for later reuse (images, judgements, technique weights, reports, metric state) goes
through :func:`atomic_write`: the bytes go to a temporary name in the same folder, are flushed to the disk, and only
then renamed over the final name, so a killed process or a full disk leaves either the old file or none, never a
truncated one. A full disk is reported as what it is, naming the file, and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from eval_learn.errors import RunError

log = logging.getLogger(__name__)
_UMASK = os.umask(0o22)
os.umask(_UMASK)  # read once: the process's umask, applied to files made with mkstemp


DIGEST_FIELD = "sha256"  # in a sealed JSON file: the SHA-256 of the rest of it (see :func:`sealed`)


READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


class NotWritable(RunError):
    """A file could not be written because its folder is read-only (a read-only mount, another user's cache)."""


def writable_folder(path: Path) -> bool:
    """``path`` can be written: it, or its nearest existing ancestor, is a folder this process may write (a
    read-only mount counts as not writable, also for root)."""
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_safe(value: Any) -> Any:
    """Valid JSON only: NaN and ±Infinity become null, tuples lists, paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def canonical_json(value: Any) -> str:
    """One text per value (sorted keys, no spaces): what digests and cache keys are computed over."""
    return json.dumps(json_safe(value), sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def digest_of(value: Any, length: int = 64) -> str:
    return sha256_bytes(canonical_json(value).encode())[:length]


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file, or the whole new one, never a part of it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if err.errno in READ_ONLY_ERRNOS:
            raise NotWritable(f"cannot write {path}: {err.strerror} (a read-only folder?)") from None
        raise
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide reports from a shared group
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunError(
                f"no space left on the disk while writing {path} ({len(data):,} bytes); nothing was left half-written. "
                f"Free some space (the image store can be cleared or bounded: see image_cache_max_gb) and run the "
                f"same command again: finished work is reused."
            ) from None
        raise
    _fsync_folder(path.parent)


def as_written(data: Any) -> Any:
    """``data`` as :func:`write_json` writes it (tuples as lists, NaN as null): what a caller gets back equals the
    file."""
    return json.loads(json.dumps(json_safe(data), allow_nan=False))


def sealed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as written, plus ``sha256``: the digest of the rest, so that a reader can tell a file eval_learn wrote
    from one changed afterwards (:func:`seal_problem`)."""
    body = as_written({k: v for k, v in data.items() if k != DIGEST_FIELD})
    return {**body, DIGEST_FIELD: digest_of(body)}


def seal_problem(data: Any) -> str | None:
    """Why ``data`` (a JSON object read back) is not what eval_learn sealed, or None when it is."""
    if not isinstance(data, dict):
        return "is not a JSON object"
    if DIGEST_FIELD not in data:
        return "has no recorded digest (written by an older eval_learn, or not by eval_learn)"
    if data[DIGEST_FIELD] != digest_of({k: v for k, v in data.items() if k != DIGEST_FIELD}):
        return "does not match its recorded digest (changed after it was written)"
    return None


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (no NaN or Infinity), written atomically."""
    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    atomic_write(Path(path), text.encode("utf-8"))


@contextlib.contextmanager
def locked(path: Path, what: str) -> Iterator[None]:
    """Hold an inter-process lock on ``path`` (released by the kernel if the holder dies). Another run working on
    the same key waits here instead of doing the same work twice."""
    path = Path(path)
    lock = FileLock(str(path), thread_local=False)  # may be released by the engine's worker thread
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except TimeoutError:
        log.info("Waiting for another run that is preparing %s (lock %s)", what, path)
        lock.acquire()
    except OSError as err:
        if err.errno not in READ_ONLY_ERRNOS:
            raise
        # A read-only folder: nothing can be written there, so there is no work to share and nothing to lock.
        log.warning("Cannot lock %s (%s): working without the lock", path, err.strerror)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()
