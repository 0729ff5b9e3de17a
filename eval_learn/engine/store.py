"""Deprecated alias of :mod:`eval_learn.engine.image_store` (renamed apart from :mod:`eval_learn.storage`, the file
primitives); import from there."""

from __future__ import annotations

import warnings

from eval_learn.engine.image_store import (
    CacheStats,
    CorruptEntry,
    Store,
    StoredImage,
    decode_verified,
    encode_png,
    image_key,
    judgement_key,
    pixel_digest,
    roundtrip,
)

__all__ = ["CacheStats", "CorruptEntry", "Store", "StoredImage", "decode_verified", "encode_png", "image_key",
           "judgement_key", "pixel_digest", "roundtrip"]  # fmt: skip
warnings.warn("eval_learn.engine.store is deprecated: import from eval_learn.engine.image_store", DeprecationWarning,
              stacklevel=2)  # fmt: skip
