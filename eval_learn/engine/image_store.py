"""The content-addressed stores under the cache directory: generated images, and judges' verdicts on them.

An image's key is a digest of everything that determines its pixels (see :func:`image_key`); a judgement's key is a
digest of the judge's settings and the image's pixel digest. A rerun, another metric, a resumed run or another job
of a sweep that asks for the same thing reads it instead of computing it again.

Every entry is one file, written atomically (:func:`eval_learn.storage.atomic_write`) and verified when read: an
image carries the SHA-256 of its pixels in a PNG text chunk, a judgement the SHA-256 of its payload. A file that does
not verify (truncated, corrupted, edited) is reported by path, removed and rebuilt. Entries are touched when used;
:meth:`Store.evict` removes the least recently used ones beyond the size bound.

Layout: ``<cache_dir>/images/<k[:2]>/<key>.png`` and ``<cache_dir>/judgements/<k[:2]>/<key>.json``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, PngImagePlugin

from eval_learn.storage import (
    NotWritable,
    atomic_write,
    canonical_json,
    digest_of,
    locked,
    remove_quietly,
    sha256_bytes,
    writable_folder,
)

log = logging.getLogger(__name__)

CacheMode = Literal["on", "off", "read_only"]
STORE_VERSION = 1  # bump when a change in the generation loop would change pixels for the same key fields
LOCK_STRIPES = 256


def pixel_digest(pixels: np.ndarray) -> str:
    """SHA-256 over an image's shape and uint8 pixels: what identifies it for its judgements."""
    return sha256_bytes(f"{pixels.shape}".encode() + np.ascontiguousarray(pixels).tobytes())


def encode_png(pixels: np.ndarray, text: dict[str, str]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


@dataclass
class StoredImage:
    """One image of a run: its pixels, its PNG bytes (with provenance text chunks) and its pixel digest."""

    pixels: np.ndarray
    png: bytes
    digest: str

    @classmethod
    def from_pixels(cls, pixels: np.ndarray, text: dict[str, str]) -> StoredImage:
        digest = pixel_digest(pixels)
        return cls(pixels, encode_png(pixels, {**text, "eval_learn:pixels_sha256": digest}), digest)

    def pil(self) -> Image.Image:
        image = Image.fromarray(self.pixels)
        image.info["eval_learn:pixels_sha256"] = self.digest  # lets a judge's cache find its verdicts
        return image


class CorruptEntry(Exception):
    pass


def decode_verified(data: bytes) -> StoredImage:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        expected = image.text.get("eval_learn:pixels_sha256")  # type: ignore[attr-defined]
        pixels = np.asarray(image.convert("RGB"))
    except Exception as err:  # noqa: BLE001 - any decoding failure means the file is damaged
        raise CorruptEntry(f"cannot be decoded ({type(err).__name__}: {err})") from None
    digest = pixel_digest(pixels)
    if expected != digest:
        raise CorruptEntry(f"its pixels do not match their recorded digest ({expected} vs {digest})")
    return StoredImage(pixels, data, digest)


def _encode_payload(value: Any) -> Any:
    """JSON with numpy arrays kept exact (base64 of their bytes)."""
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {"__ndarray__": base64.b64encode(array.tobytes()).decode(), "dtype": str(array.dtype),
                "shape": list(array.shape)}  # fmt: skip
    if isinstance(value, dict):
        return {str(k): _encode_payload(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_payload(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def roundtrip(payload: Any) -> Any:
    """``payload`` as it reads back from the store, so a fresh verdict and a reused one are the same value."""
    return _decode_payload(json.loads(canonical_json(_encode_payload(payload))))


def _decode_payload(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            raw = base64.b64decode(value["__ndarray__"])
            return np.frombuffer(raw, dtype=value["dtype"]).reshape(value["shape"]).copy()
        return {k: _decode_payload(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_payload(v) for v in value]
    return value


@dataclass
class CacheStats:
    images_generated: int = 0
    images_reused: int = 0
    judgements_reused: int = 0
    judgements_computed: int = 0
    corrupt_entries_rebuilt: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images_generated": self.images_generated,
            "images_reused": self.images_reused,
            "judgements_reused": self.judgements_reused,
        }


class Store:
    """Images and judgements under ``root``; ``mode`` on (read and write), read_only, or off (neither)."""

    def __init__(self, root: Path, mode: CacheMode = "on", max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.mode = mode
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        if mode == "on" and not writable_folder(self.root):
            self._read_only(f"{self.root} cannot be written")

    def _read_only(self, why: str) -> None:
        """A store that cannot be written is read from only: the run goes on and renders what is missing."""
        log.warning("Image store: %s; using it read-only (image_cache=read_only): new images are not cached", why)
        self.mode = "read_only"

    @property
    def readable(self) -> bool:
        return self.mode in ("on", "read_only")

    @property
    def writable(self) -> bool:
        return self.mode == "on"

    def _path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def _corrupt(self, path: Path, why: str) -> None:
        log.warning("Cache entry %s is damaged (%s): removed, it will be rebuilt", path, why)
        self.stats.corrupt_entries_rebuilt.append(str(path))
        if self.writable:
            remove_quietly(path)

    @staticmethod
    def _touch(path: Path) -> None:
        with contextlib.suppress(OSError):
            os.utime(path)  # last use, for least-recently-used eviction

    # --- images ---------------------------------------------------------------------------------------------------
    def get_image(self, key: str) -> StoredImage | None:
        if not self.readable:
            return None
        path = self._path("images", key, ".png")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            image = decode_verified(data)
        except CorruptEntry as err:
            self._corrupt(path, str(err))
            return None
        if self.writable:
            self._touch(path)
        return image

    def _write(self, path: Path, data: bytes) -> None:
        try:
            atomic_write(path, data)
        except NotWritable as err:
            self._read_only(str(err))

    def put_image(self, key: str, image: StoredImage) -> None:
        if self.writable:
            self._write(self._path("images", key, ".png"), image.png)

    @contextlib.contextmanager
    def generating(self, keys: list[str]) -> Iterator[None]:
        """Hold the locks of ``keys`` (striped) so that concurrent runs do not render the same images twice."""
        if not self.writable:
            yield
            return
        stripes = sorted({key[:2] for key in keys})
        with contextlib.ExitStack() as stack:
            for stripe in stripes:
                stack.enter_context(locked(self.root / "locks" / f"images-{stripe}.lock", f"images ({stripe})"))
            yield

    # --- judgements -----------------------------------------------------------------------------------------------
    def get_judgement(self, key: str) -> Any | None:
        if not self.readable:
            return None
        path = self._path("judgements", key, ".json")
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            payload = entry["payload"]
            ok = entry["sha256"] == sha256_bytes(canonical_json(payload).encode())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            self._corrupt(path, f"unreadable: {type(err).__name__}")
            return None
        if not ok:
            self._corrupt(path, "its payload does not match its recorded digest")
            return None
        if self.writable:
            self._touch(path)
        self.stats.judgements_reused += 1
        return _decode_payload(payload)

    def put_judgement(self, key: str, payload: Any, judge: str) -> None:
        self.stats.judgements_computed += 1
        if not self.writable:
            return
        encoded = json.loads(canonical_json(_encode_payload(payload)))
        entry = {"judge": judge, "sha256": sha256_bytes(canonical_json(encoded).encode()), "payload": encoded}
        self._write(self._path("judgements", key, ".json"), canonical_json(entry).encode())

    # --- size bound -----------------------------------------------------------------------------------------------
    def usage(self) -> tuple[int, int]:
        """(files, bytes) held by the store."""
        files = size = 0
        for kind in ("images", "judgements"):
            for path in (self.root / kind).glob("*/*"):
                with contextlib.suppress(OSError):
                    size += path.stat().st_size
                    files += 1
        return files, size

    def evict(self) -> int:
        """Remove least recently used entries until the store fits ``max_bytes``; returns how many were removed."""
        if not self.writable or self.max_bytes is None:
            return 0
        entries = []
        for kind in ("images", "judgements"):
            for path in (self.root / kind).glob("*/*"):
                with contextlib.suppress(OSError):
                    stat = path.stat()
                    entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            remove_quietly(path)
            total -= size
            removed += 1
        if removed:
            log.info("Image store: removed %d least recently used entries to stay under %.2f GB", removed,
                     self.max_bytes / 1e9)  # fmt: skip
        return removed


def image_key(context: dict[str, Any], request_fields: dict[str, Any]) -> str:
    """``context``: base model and technique fingerprints, scheduler, dtype, device, generation mode, versions."""
    return digest_of({"store_version": STORE_VERSION, "context": context, "request": request_fields})


def judgement_key(judge_fingerprint: str, pixels_digest: str) -> str:
    return digest_of({"judge": judge_fingerprint, "image": pixels_digest})
