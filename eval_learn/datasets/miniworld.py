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
        require(
            concept_kind(self.concept) is not None, f"'{self.concept}' is not a MiniWorld colour, shape or background"
        )
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


# Wordings of a concept prompt that the evaluation prompts above never use: the training captions' other templates,
# attributes in an order never seen in training, words never seen in training around the concept, and the concept
# on its own. The MiniWorld vocabulary has no synonyms ("crimson", "scarlet") or descriptions ("the colour of
# blood"): such words fall back to byte pieces the model never learned and draw nothing of the concept, so they
# would measure nothing. Every family here is drawn as the concept by the unmodified model.
VARIANT_TEMPLATES = {
    "picture": "a picture of a {}",
    "image": "an image of a {}",
    "bare": "{}",
    "painting": "a painting of a {}",  # "painting": never in a training caption
    "style": "a {} style",  # "style": never in a training caption
}


def _reordered(colour: str | None, shape: str | None, background: str | None) -> str:
    """The attributes in an order no training caption has (shape before colour, background first)."""
    text = f"a {shape} {colour}" if colour and shape else f"a {shape or colour}"
    return f"a {background} background {text[2:]}" if background else text


def _alone(concept: str) -> list[str]:
    """The concept named on its own, as some training captions do."""
    kind = concept_kind(concept)
    if kind == "colour":
        return [f"a {concept} shape", f"something {concept}", concept]
    if kind == "shape":
        return [concept, f"a picture of a {concept}", f"a painting of a {concept}"]
    return [f"a {concept} background", f"an image of a {concept} background"]


def variant_rows(concept: str) -> list[PromptRow]:
    rows = []
    for colour, shape, background in _cases(concept):
        other = shape if concept_kind(concept) != "shape" else colour
        extra = {"concept": concept, "colour": colour, "shape": shape, "background": background}
        for family, template in VARIANT_TEMPLATES.items():
            rows.append(PromptRow(prompt(colour, shape, background, template), extra={**extra, "variant": family},
                                  stratum=(family, str(other))))  # fmt: skip
        rows.append(PromptRow(_reordered(colour, shape, background), extra={**extra, "variant": "reordered"},
                              stratum=("reordered", str(other))))  # fmt: skip
    kind = concept_kind(concept)
    for text in _alone(concept):
        extra = {"concept": concept, "colour": None, "shape": None, "background": None, kind: concept}  # type: ignore[dict-item]
        rows.append(PromptRow(text, extra={**extra, "variant": "alone"}, stratum=("alone", text)))
    return rows


@dataclass
class MiniWorldVariantsConfig(PromptSetConfig):
    concept: str = "red"

    def validate(self) -> None:
        kind = concept_kind(self.concept)
        require(kind is not None, f"'{self.concept}' is not a MiniWorld colour, shape or background")


class MiniWorldVariants(PromptSet):
    """``miniworld_variants``: the concept asked for in wordings the ``miniworld`` prompts never use (see above)."""

    name = "miniworld_variants"
    config_cls = MiniWorldVariantsConfig
    config: MiniWorldVariantsConfig

    def rows(self) -> list[PromptRow]:
        return variant_rows(self.config.concept)

    def metadata(self) -> dict[str, Any]:
        return {"source": "miniworld_variants", "concept": self.config.concept, "variants": [*VARIANT_TEMPLATES,
                "reordered", "alone"]}  # fmt: skip
