"""The metric contract, after torchmetrics: ``update`` per batch, ``compute`` at the end, state that can be saved,
restored and merged.

State is kept per prompt index, never per batch, so a metric gives the same value however its images were batched,
and shards of one run merge into the unsplit result.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL.Image import Image

from eval_learn.configs import require
from eval_learn.runtime import RunContext
from eval_learn.types import MetricResult, PromptDataset, PromptRecord


@dataclass
class MetricConfig:
    """Settings every metric has."""

    limit: int | None = None  # keep the first N prompts of the (filtered) dataset
    prompts_path: str | None = None  # a local prompt file instead of the metric's default source
    device: str | None = None  # where the metric's own models run

    def measured_concept(self) -> str | None:
        """The one concept this metric measures, if any (checked against the technique's erased concepts)."""
        return None

    def validate(self) -> None:
        require(self.limit is None or self.limit > 0, f"limit must be a positive integer, got {self.limit}")


def resolve_auto(
    concept: str, dataset: str, family: str, context: RunContext, erased: list[str] | None, fallback: str | None
) -> tuple[str, str | None]:
    """``auto`` concept → the technique's erased concept, else the model's default concept; ``auto`` dataset → the
    model's own prompt set for this metric family, else ``fallback``."""
    if concept == "auto":
        concept = erased[0] if erased else context.model.default_concept
    if dataset == "auto":
        dataset = context.model.default_datasets.get(family, fallback)
    return concept, dataset


class Metric:
    name: ClassVar[str]
    config_cls: ClassVar[type[MetricConfig]] = MetricConfig
    higher_is_better: ClassVar[bool]

    def __init__(self, config: MetricConfig, context: RunContext) -> None:
        self.config = config
        self.context = context
        self.reset()

    # --- what subclasses implement -------------------------------------------------------------------------------
    @classmethod
    def dataset_name(cls, config: MetricConfig, context_model: Any) -> str:
        raise NotImplementedError

    @classmethod
    def resolve_config(cls, config: MetricConfig, context: RunContext, erased: list[str] | None) -> MetricConfig:
        """Fill ``auto`` values from the run (the technique's erased concept, the model's prompt set) and check
        that the result is coherent; the resolved config is what the report records."""
        return config

    @classmethod
    def preflight(cls, config: MetricConfig, context: RunContext) -> None:
        """Checks that need the run context (e.g. is the prompt source reachable?), done at runner construction."""

    def setup(self) -> None:
        """Load the metric's own models (judges)."""

    def load_dataset(self) -> PromptDataset:
        raise NotImplementedError

    def judge(self, image: Image, record: PromptRecord) -> dict[str, Any]:
        """The per-image judgement kept in state and written to ``metadata.json``."""
        raise NotImplementedError

    def compute(self) -> MetricResult:
        raise NotImplementedError

    def judge_settings(self) -> dict[str, Any]:
        """The judge's exact settings for the report: those of ``self.judge_model`` once ``setup`` has loaded one."""
        judge = getattr(self, "judge_model", None)
        return judge.settings() if judge is not None else {}

    # --- shared state handling -----------------------------------------------------------------------------------
    def reset(self) -> None:
        self.judgements: dict[int, dict[str, Any]] = {}

    def update(self, images: list[Image], records: list[PromptRecord]) -> list[dict[str, Any]]:
        if len(images) != len(records):
            raise ValueError(f"{len(images)} images for {len(records)} prompts")
        out = []
        for image, record in zip(images, records, strict=True):
            if record.index in self.judgements:
                raise ValueError(f"prompt {record.index} was judged twice")
            self.judgements[record.index] = judgement = self.judge(image, record)
            out.append(judgement)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"judgements": {str(k): v for k, v in sorted(self.judgements.items())}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.judgements = {int(k): v for k, v in state["judgements"].items()}

    def merge(self, other: Metric) -> None:
        """Add another shard's state (the same metric over disjoint prompts)."""
        overlap = self.judgements.keys() & other.judgements.keys()
        if overlap:
            raise ValueError(f"cannot merge: prompts {sorted(overlap)[:5]} are in both states")
        self.judgements.update(copy.deepcopy(other.judgements))
