"""Plain data passed between datasets, techniques, metrics and runners."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PromptRecord:
    """One prompt to render, with the seed and settings that belong to it (never to its batch position)."""

    index: int
    prompt: str
    seed: int
    guidance_scale: float | None = None
    categories: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptDataset:
    """A metric's prompts plus where they came from (recorded in the report as ``dataset_metadata``)."""

    name: str
    records: list[PromptRecord]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class MetricResult:
    name: str
    value: float | None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "details": self.details}


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    seed: int
    guidance_scale: float
    num_inference_steps: int
    height: int
    width: int

    def fields(self) -> dict[str, Any]:
        return asdict(self)

    def call_group(self) -> tuple[float, int, int, int]:
        """The settings one pipeline call shares (diffusers takes one guidance scale, step count and size per call)."""
        return (self.guidance_scale, self.num_inference_steps, self.height, self.width)
