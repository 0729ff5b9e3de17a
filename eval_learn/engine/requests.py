"""Generation requests: what one image is, independent of which metric asked for it or which batch it lands in.

A metric's prompt record becomes a request once the technique's and the model's generation defaults are filled
in. Two metrics that ask for the same prompt with the same seed, guidance, steps and size ask for the same image, and
the plan generates it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eval_learn.guidance import effective_guidance_scale
from eval_learn.types import GenerationRequest, PromptRecord

__all__ = ["GenerationRequest", "request_for"]


def request_for(record: PromptRecord, settings: dict[str, Any]) -> GenerationRequest:
    """A record's own guidance scale wins over the technique's/model's default."""
    return GenerationRequest(
        prompt=record.prompt,
        seed=record.seed,
        guidance_scale=effective_guidance_scale(record.guidance_scale, settings["guidance_scale"]),
        num_inference_steps=int(settings["num_inference_steps"]),
        height=int(settings["height"]),
        width=int(settings["width"]),
    )


@dataclass
class Plan:
    """Every metric's records mapped onto unique requests, in the order they are first asked for."""

    requests: list[GenerationRequest]
    # per metric: (record, position of its request in ``requests``), in the metric's dataset order
    wanted: dict[str, list[tuple[PromptRecord, int]]]

    @property
    def asked(self) -> int:
        return sum(len(v) for v in self.wanted.values())

    def users(self) -> list[list[tuple[str, PromptRecord]]]:
        """For each request, the (metric, record) pairs that use its image."""
        out: list[list[tuple[str, PromptRecord]]] = [[] for _ in self.requests]
        for metric, pairs in self.wanted.items():
            for record, position in pairs:
                out[position].append((metric, record))
        return out


def make_plan(datasets: dict[str, list[PromptRecord]], settings: dict[str, Any]) -> Plan:
    """Unique requests, ordered by the settings a pipeline call shares (guidance, steps, size) and then by first
    appearance: batches are homogeneous, so a set with per-prompt guidance scales (I2P) is not split into many
    small calls."""
    first: dict[GenerationRequest, int] = {}
    asked: dict[str, list[tuple[PromptRecord, GenerationRequest]]] = {}
    for metric, records in datasets.items():
        asked[metric] = []
        for record in records:
            request = request_for(record, settings)
            first.setdefault(request, len(first))
            asked[metric].append((record, request))
    requests = sorted(first, key=lambda r: (r.call_group(), first[r]))
    position = {request: i for i, request in enumerate(requests)}
    wanted = {metric: [(record, position[request]) for record, request in pairs] for metric, pairs in asked.items()}
    return Plan(requests, wanted)
