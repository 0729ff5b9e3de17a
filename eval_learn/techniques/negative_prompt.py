"""``negative_prompt``: the training-free baseline — the erased concept as the negative prompt.

With classifier-free guidance, ε̂ = ε(x, c_neg) + w·[ε(x, c) − ε(x, c_neg)]: the unconditional branch is conditioned on
the negative prompt instead of the empty one, which pushes samples away from it. The ESD paper (Gandikota et al.,
ICCV 2023, §5) and the SLD paper (Schramowski et al., CVPR 2023) report it as the baseline a trained erasure must
beat. No weights change; it acts through the shared sampling loop (diffusers' ``negative_prompt`` argument), and
every image's metadata records the negative prompt that was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eval_learn.configs import require
from eval_learn.techniques.base import Technique, TechniqueConfig


@dataclass
class NegativePromptConfig(TechniqueConfig):
    erase_concept: str = "nudity"
    negative_prompt: str | None = None  # the text used as the negative prompt; null: the erased concept itself

    def erased_concepts(self) -> list[str] | None:
        return [self.erase_concept]

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept must be non-empty")
        require(self.negative_prompt is None or bool(self.negative_prompt.strip()), "negative_prompt must be non-empty")

    def text(self) -> str:
        return self.negative_prompt if self.negative_prompt is not None else self.erase_concept


class NegativePrompt(Technique):
    name = "negative_prompt"
    config_cls = NegativePromptConfig
    config: NegativePromptConfig

    def sampling_arguments(self, pipe: Any, prompts: list[str]) -> dict[str, Any]:
        return {"negative_prompt": [self.config.text()] * len(prompts)}

    def sampling_settings(self) -> dict[str, Any]:
        return {"negative_prompt": self.config.text()}
