"""One metric within a run, as the engine works through it and the report builder reads it."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval_learn.engine.spec import MetricSpec
from eval_learn.types import MetricResult, PromptDataset

if TYPE_CHECKING:
    from eval_learn.metrics.base import Metric

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """One metric within a run: its instance, prompts, folder, per-image metadata, timings and outcome."""

    spec: MetricSpec
    metric: Metric
    dataset: PromptDataset
    folder: Path
    entries: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"images_generated": 0, "images_reused": 0})
    error: dict[str, str] | None = None
    result: MetricResult | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def add_time(self, key: str, seconds: float) -> None:
        self.timings[key] = round(self.timings.get(key, 0.0) + seconds, 4)

    def fail(self, stage: str, err: BaseException) -> None:
        self.error = {"stage": stage, "type": type(err).__name__, "message": str(err),
                      "traceback": "".join(traceback.format_exception(err))}  # fmt: skip
        log.error("Metric <%s> failed while %s: %s: %s (the other metrics go on)", self.name, stage,
                  type(err).__name__, err)  # fmt: skip
