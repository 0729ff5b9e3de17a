"""Judges: the models that read generated images (NudeNet, the MiniWorld CNN, CLIP, ...), as named parts.

A judge has a config (``judge: nudenet`` or ``judge: {name: nudenet, preset: unlearndiffatk}`` in a metric's config),
records its exact settings (model id or file digest, classes, thresholds), and judges a *batch* of images at a time.
Its verdict on an image depends only on the image and its settings, so the engine caches verdicts under a key of
both (:class:`eval_learn.engine.judging.CachedJudge`): a rerun, a resumed run or another metric never judges the same
image twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from PIL.Image import Image

from eval_learn.storage import digest_of

log = logging.getLogger(__name__)


@dataclass
class JudgeConfig:
    """Settings every judge has (none yet); subclasses add theirs."""

    def validate(self) -> None:
        pass

    def concept_problem(self, concept: str) -> str | None:
        """Why these settings cannot tell whether an image shows ``concept`` (e.g. it is not among a classifier's
        labels), or None; checked when a metric's config is resolved, before any model loads."""
        return None


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

    def summary(self, verdicts: list[dict[str, Any]], concept: str | None = None) -> dict[str, Any]:
        """Extra details over the images that showed ``concept`` (e.g. how many per detector class)."""
        return {}

    def parts(self) -> dict[str, Judge]:
        """Judges whose verdicts this one's are computed from, by key: CLIP zero-shot and Q16 read the ``clip``
        judge's image embedding, ``any_of`` combines Q16's and NudeNet's. The engine caches every part's verdicts
        under the part's own settings, so another label set, threshold or combination (or clip_score) on the same
        images never runs a part on an image twice."""
        return {}

    def combine(self, by_part: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """This judge's verdicts from its parts' (only for a judge that has :meth:`parts`)."""
        raise NotImplementedError

    def ensure_loaded(self) -> None:
        if not self._loaded:
            start = time.perf_counter()
            self.load()
            self._loaded = True
            self.load_seconds = time.perf_counter() - start

    def judge(self, images: list[Image]) -> list[dict[str, Any]]:
        parts = self.parts()
        if parts:
            return self.judge_from_parts({key: part.judge(images) for key, part in parts.items()})
        self.ensure_loaded()
        return self._checked(self.judge_batch(images), len(images))

    def judge_from_parts(self, by_part: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        self.ensure_loaded()
        return self._checked(self.combine(by_part), len(next(iter(by_part.values()))))

    def _checked(self, verdicts: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
        if len(verdicts) != count:
            raise RuntimeError(f"judge '{self.name}' returned {len(verdicts)} verdicts for {count} images")
        return verdicts
