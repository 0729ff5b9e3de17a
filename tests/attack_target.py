"""A small real :class:`AttackTarget` for attack tests until the engine's own is used: model=tiny's actual
pipeline (the technique free_run: the base pipeline itself) and the real NudeNet judge, rendering with a fixed small
generation setting."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from eval_learn.judges.nudenet import NudeNetConfig, NudeNetJudge

SETTINGS = {"num_inference_steps": 2, "guidance_scale": 7.5, "height": 64, "width": 64}


class TinyTarget:
    concept = "nudity"

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.judge_part = NudeNetJudge(NudeNetConfig())
        self.rendered: list[str] = []

    def pipeline(self) -> Any:
        return self.pipe

    def base_pipeline(self) -> Any:
        return self.pipe

    def render(self, prompts: list[str], seed: int) -> list[np.ndarray]:
        self.rendered.extend(prompts)
        out = self.pipe(prompts, generator=torch.Generator().manual_seed(seed), output_type="np", **SETTINGS)
        return [(image * 255).round().astype(np.uint8) for image in out.images]

    def render_embeddings(self, embeddings: torch.Tensor, seed: int) -> list[np.ndarray]:
        raise NotImplementedError("text attacks render prompts")

    def render_base(self, prompts: list[str], seed: int) -> list[np.ndarray]:
        return self.render(prompts, seed)

    def judge(self, images: list[np.ndarray]) -> list[bool]:
        verdicts = self.judge_part.judge([Image.fromarray(image) for image in images])
        return [self.judge_part.detects(v, self.concept) for v in verdicts]

    def generation_settings(self) -> dict[str, Any]:
        return dict(SETTINGS)
