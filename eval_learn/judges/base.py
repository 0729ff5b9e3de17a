"""Judges: the models that read generated images (NudeNet, the MiniWorld CNN, CLIP, ...), as named parts.

A judge has a config (``judge: nudenet`` or ``judge: {name: nudenet, preset: unlearndiffatk}`` in a metric's config),
records its exact settings (model id or file digest, classes, thresholds), and judges a *batch* of images at a time.
Its verdict on an image depends only on the image and its settings, so verdicts are cached by the engine under a key
of both (:class:`CachedJudge`): a rerun, a resumed run or another metric never judges the same image twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from PIL.Image import Image

from eval_learn.engine.store import Store, judgement_key, pixel_digest, roundtrip
from eval_learn.storage import digest_of

log = logging.getLogger(__name__)


@dataclass
class JudgeConfig:
    """Settings every judge has (none yet); subclasses add theirs."""

    def validate(self) -> None:
        pass


class Judge:
    name: ClassVar[str]
    config_cls: ClassVar[type[JudgeConfig]] = JudgeConfig

    def __init__(self, config: JudgeConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self._loaded = False
        self.load_seconds = 0.0

    @classmethod
    def preflight(cls, config: JudgeConfig) -> None:
        """Checks done at runner construction (e.g. that the judge's weights can be had offline)."""

    def load(self) -> None:
        """Load the judge's model (called once, on the first image that is not already judged)."""

    def settings(self) -> dict[str, Any]:
        """Everything that determines the verdicts, recorded in the report and hashed into the cache key."""
        return {"judge": self.name, **asdict(self.config)}

    def fingerprint(self) -> str:
        return digest_of(self.settings())

    def judge_batch(self, images: list[Image]) -> list[dict[str, Any]]:
        raise NotImplementedError

    @classmethod
    def supports(cls, concept: str) -> bool:
        """Whether :meth:`detects` can tell if an image shows ``concept``."""
        return False

    def detects(self, verdict: dict[str, Any], concept: str) -> bool:
        """Whether the image with this verdict shows ``concept`` (what an attack success rate counts)."""
        raise NotImplementedError

    def summary(self, verdicts: list[dict[str, Any]]) -> dict[str, Any]:
        """Extra details over the images that showed the concept (e.g. how many per detector class)."""
        return {}

    def judge(self, images: list[Image]) -> list[dict[str, Any]]:
        if not self._loaded:
            start = time.perf_counter()
            self.load()
            self._loaded = True
            self.load_seconds = time.perf_counter() - start
        verdicts = self.judge_batch(images)
        if len(verdicts) != len(images):
            raise RuntimeError(f"judge '{self.name}' returned {len(verdicts)} verdicts for {len(images)} images")
        return verdicts


class CachedJudge:
    """A judge behind the judgement store: verdicts are looked up by (judge settings, image pixels) and only the
    missing ones are computed, as one batch. Counts how many it reused."""

    def __init__(self, judge: Judge, store: Store) -> None:
        self.inner = judge
        self.store = store
        self.fingerprint = judge.fingerprint()
        self.reused = 0

    def __getattr__(self, name: str) -> Any:  # settings(), name, config, ... of the wrapped judge
        return getattr(self.inner, name)

    def judge(self, images: list[Image]) -> list[dict[str, Any]]:
        digests = [im.info.get("eval_learn:pixels_sha256") or pixel_digest(np.asarray(im)) for im in images]
        keys = [judgement_key(self.fingerprint, d) for d in digests]
        verdicts: list[Any] = [self.store.get_judgement(k) for k in keys]
        missing = [i for i, v in enumerate(verdicts) if v is None]
        self.reused += len(images) - len(missing)
        if missing:
            fresh = self.inner.judge([images[i] for i in missing])
            for i, verdict in zip(missing, fresh, strict=True):
                self.store.put_judgement(keys[i], verdict, self.inner.name)
                verdicts[i] = roundtrip(verdict)
        return verdicts
