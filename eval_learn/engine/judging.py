"""Judges behind the judgement store: a verdict depends only on the judge's settings and the image's pixels."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL.Image import Image

from eval_learn.engine.image_store import Store, judgement_key, pixel_digest, roundtrip
from eval_learn.judges.base import Judge


class CachedJudge:
    """A judge behind the judgement store: verdicts are looked up by (judge settings, image pixels) and only the
    missing ones are computed, as one batch. Counts how many it reused."""

    def __init__(self, judge: Judge, store: Store) -> None:
        self.inner = judge
        self.store = store
        self.fingerprint = judge.fingerprint()
        self.reused = 0
        # the clip judge's embeddings under Q16 or a zero-shot judge, any_of's Q16 and NudeNet: each cached under its
        # own settings, shared with every judge and run that uses the same part
        self.cached_parts = {key: CachedJudge(part, store) for key, part in judge.parts().items()}

    def __getattr__(self, name: str) -> Any:  # settings(), name, config, ... of the wrapped judge
        return getattr(self.inner, name)

    def reused_verdicts(self) -> int:
        """Verdicts taken from the store: this judge's, and its parts' where this judge's verdict had to be made
        (e.g. the CLIP embeddings under a Q16 with a new threshold)."""
        return self.reused + sum(part.reused_verdicts() for part in self.cached_parts.values())

    def load_seconds_total(self) -> float:
        """Seconds spent loading this judge and its parts (each loads on its first image to judge)."""
        return self.inner.load_seconds + sum(p.load_seconds_total() for p in self.cached_parts.values())

    def judge(self, images: list[Image]) -> list[dict[str, Any]]:
        digests = [im.info.get("eval_learn:pixels_sha256") or pixel_digest(np.asarray(im)) for im in images]
        keys = [judgement_key(self.fingerprint, d) for d in digests]
        verdicts: list[Any] = [self.store.get_judgement(k) for k in keys]
        missing = [i for i, v in enumerate(verdicts) if v is None]
        self.reused += len(images) - len(missing)
        if missing:
            todo = [images[i] for i in missing]
            if self.cached_parts:
                fresh = self.inner.judge_from_parts({key: part.judge(todo) for key, part in self.cached_parts.items()})
            else:
                fresh = self.inner.judge(todo)
            for i, verdict in zip(missing, fresh, strict=True):
                self.store.put_judgement(keys[i], verdict, self.inner.name)
                verdicts[i] = roundtrip(verdict)
        return verdicts
