"""MiniWorld prompt sets: prompts that ask for a concept, and prompts for its near and far neighbours.

Every record carries the attributes it asks for (``extra``: colour, shape, background, group), so a judge can say
whether the image shows them. Seeds are ``base_seed + index``.
"""

from __future__ import annotations

from itertools import product

from eval_learn.miniworld.world import BACKGROUNDS, COLOURS, NEAR, SHAPES, concept_kind, prompt
from eval_learn.types import PromptRecord

TEMPLATES = ("a {}", "a photo of a {}")


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


def concept_records(
    concept: str, group: str, per_case: int, start: int, base_seed: int, templates: tuple[str, ...] = TEMPLATES
) -> list[PromptRecord]:
    records = []
    for (colour, shape, background), template in product(_cases(concept), templates):
        for _ in range(per_case):
            index = start + len(records)
            text = prompt(colour, shape, background, template)
            extra = {"group": group, "concept": concept, "colour": colour, "shape": shape, "background": background}
            records.append(PromptRecord(index, text, base_seed + index, extra=extra))
    return records
