"""``miniworld``: prompts that ask for a MiniWorld concept, and for its near and far neighbours.

Every row carries the attributes it asks for (``extra``: colour, shape, background, group, concept), so a judge can
say whether the image shows them, and a stratum (group, concept, the other attribute) so that ``limit`` keeps
prompts from every group and shape. Rows have no seed of their own: image i of the set gets ``base_seed + i``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Any

from eval_learn.configs import require
from eval_learn.datasets.base import PromptRow, PromptSet, PromptSetConfig
from eval_learn.miniworld.world import BACKGROUNDS, COLOURS, NEAR, SHAPES, concept_kind, prompt

TEMPLATES = ("a {}", "a photo of a {}")
GROUPS = ("target", "near", "far")


def _cases(concept: str) -> list[tuple[str | None, str | None, str | None]]:
    """(colour, shape, background) combinations whose prompt names ``concept``."""
    kind = concept_kind(concept)
    if kind == "colour":
        return [(concept, s, None) for s in SHAPES]
    if kind == "shape":
        return [(c, concept, None) for c in COLOURS]
    return [(c, s, concept) for c, s in product(("red", "green", "blue", "yellow"), ("circle", "square"))]


def neighbours(concept: str) -> dict[str, list[str]]:
    """Near neighbours share the concept's attribute and resemble it; far ones are the rest of that attribute."""
    kind = concept_kind(concept)
    values = {"colour": list(COLOURS), "shape": list(SHAPES), "background": list(BACKGROUNDS)}[kind]  # type: ignore[index]
    near = list(NEAR[concept]) if kind == "colour" else [v for v in values if v != concept][:2]
    far = [v for v in values if v != concept and v not in near]
    return {"near": near, "far": far}


def concept_rows(concept: str, group: str) -> list[PromptRow]:
    rows = []
    for (colour, shape, background), template in product(_cases(concept), TEMPLATES):
        extra = {"group": group, "concept": concept, "colour": colour, "shape": shape, "background": background}
        other = shape if concept_kind(concept) != "shape" else colour
        rows.append(PromptRow(prompt(colour, shape, background, template), extra=extra,
                              stratum=(group, concept, str(other))))  # fmt: skip
    return rows


@dataclass
class MiniWorldPromptsConfig(PromptSetConfig):
    concept: str = "red"
    groups: list[str] = field(default_factory=lambda: ["target"])  # target: the concept; near/far: its neighbours

    def validate(self) -> None:
        require(concept_kind(self.concept) is not None, f"'{self.concept}' is not a MiniWorld colour, shape or background")
        require(bool(self.groups) and set(self.groups) <= set(GROUPS), f"groups must be a non-empty subset of {GROUPS}")


class MiniWorldPrompts(PromptSet):
    name = "miniworld"
    config_cls = MiniWorldPromptsConfig
    config: MiniWorldPromptsConfig

    def rows(self) -> list[PromptRow]:
        rows = []
        around = neighbours(self.config.concept)
        for group in GROUPS:
            if group not in self.config.groups:
                continue
            for concept in [self.config.concept] if group == "target" else around[group]:
                rows += concept_rows(concept, group)
        return rows

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"source": "miniworld", "concept": self.config.concept}
        if set(self.config.groups) - {"target"}:
            meta["neighbours"] = neighbours(self.config.concept)
        return meta
