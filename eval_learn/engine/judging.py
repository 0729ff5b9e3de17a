"""Judges behind the judgement store: a verdict depends only on the judge's settings and the image's pixels."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL.Image import Image

from eval_learn.engine.store import Store, judgement_key, pixel_digest, roundtrip
from eval_learn.judges.base import Judge


class CachedJudge:
    """A judge behind the judgement store: verdicts are looked up by (judge settings, image pixels) and only the
    missing ones are computed, as one batch. Counts how many it reused."""

    def __init__(self, judge: Judge, store: Store) -> None:
        self.inner = judge
        self.store = store
        self.fingerprint = judge.fingerprint()
        self.reused = 0
        base = judge.base_judge()  # e.g. the clip judge's embeddings under a zero-shot judge: cached themselves
        self.base = CachedJudge(base, store) if base is not None else None
        # e.g. any_of's Q16 and NudeNet: each cached under its own settings, shared with runs that use one of them
        self.cached_parts = {key: CachedJudge(part, store) for key, part in judge.parts().items()}

    def __getattr__(self, name: str) -> Any:  # settings(), name, config, ... of the wrapped judge
        return getattr(self.inner, name)

    def reused_verdicts(self) -> int:
        """Verdicts taken from the store: this judge's, and its parts' where the combined verdict had to be made
        (an embedding read by a base judge is not counted: it is not a verdict)."""
        return self.reused + sum(part.reused_verdicts() for part in self.cached_parts.values())

    def load_seconds_total(self) -> float:
        """Seconds spent loading this judge, its base and its parts (each loads on its first image to judge)."""
        base = self.base.load_seconds_total() if self.base else 0.0
        return self.inner.load_seconds + base + sum(p.load_seconds_total() for p in self.cached_parts.values())

    def judge(self, images: list[Image]) -> list[dict[str, Any]]:
        digests = [im.info.get("eval_learn:pixels_sha256") or pixel_digest(np.asarray(im)) for im in images]
        keys = [judgement_key(self.fingerprint, d) for d in digests]
        verdicts: list[Any] = [self.store.get_judgement(k) for k in keys]
        missing = [i for i, v in enumerate(verdicts) if v is None]
        self.reused += len(images) - len(missing)
        if missing:
            todo = [images[i] for i in missing]
            if self.cached_parts:
                fresh = self.inner.combine({key: part.judge(todo) for key, part in self.cached_parts.items()})
            elif self.base:
                fresh = self.inner.judge_from_base(self.base.judge(todo))
            else:
                fresh = self.inner.judge(todo)
            for i, verdict in zip(missing, fresh, strict=True):
                self.store.put_judgement(keys[i], verdict, self.inner.name)
                verdicts[i] = roundtrip(verdict)
        return verdicts
