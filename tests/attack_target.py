"""A real :class:`~eval_learn.attacks.base.AttackTarget` over ``model=tiny`` for the attack tests: a technique's own
pipeline (UCE, edited in closed form) as the model under test, ``free_run`` as the base, renders through the shared
sampling loop, and the MiniWorld judge's verdict (its numbers mean nothing on tiny's images; the tests check the
attacks' properties, not what the judge sees)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from eval_learn.engine.requests import request_for
from eval_learn.engine.sampling import GenerationMode, render
from eval_learn.judges.miniworld import MiniWorldJudgeConfig, MiniWorldJudgePart
from eval_learn.models import resolve_model
from eval_learn.runtime import RunContext
from eval_learn.techniques.base import Technique, TechniqueConfig
from eval_learn.techniques.free_run import FreeRun
from eval_learn.techniques.uce import UCE, UCEConfig
from eval_learn.types import GenerationRequest, PromptRecord


def tiny_context(cache_dir) -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=cache_dir)


class TinyTarget:
    """UCE (erasing ``concept``) on ``model=tiny`` against ``free_run``; one render per call, one row per prompt."""

    def __init__(self, cache_dir, concept: str = "red", technique: Technique | None = None) -> None:
        """``technique``: another prepared technique (on its own model) instead of UCE on tiny."""
        self.concept = concept
        if technique is None:
            technique = UCE(UCEConfig(erase_concept=[concept]), tiny_context(cache_dir))
            technique.prepare()
        self.technique = technique
        self.base = FreeRun(TechniqueConfig(), technique.context)
        self.judge_part = MiniWorldJudgePart(MiniWorldJudgeConfig())
        self.judge_part.load()
        self.mode = GenerationMode("strict", 1)

    def pipeline(self) -> Any:
        return self.technique.pipeline()

    def base_pipeline(self) -> Any:
        return self.base.pipeline()

    def _requests(self, prompts: list[str], seed: int) -> list[GenerationRequest]:
        settings = self.technique.generation_settings()
        return [request_for(PromptRecord(0, p, seed), settings) for p in prompts]

    def render(self, prompts: list[str], seed: int) -> list[np.ndarray]:
        return render(self.technique, self._requests(prompts, seed), self.mode)

    def render_embeddings(self, embeddings: torch.Tensor, seed: int) -> list[np.ndarray]:
        """One pipeline call per row with the run's settings (main's shared loop takes no embeddings yet)."""
        pipe, s = self.technique.pipeline(), self.technique.generation_settings()
        out = []
        for row in embeddings:
            with torch.inference_mode():
                image = pipe(prompt_embeds=row[None], generator=[torch.Generator("cpu").manual_seed(seed)],
                             num_inference_steps=s["num_inference_steps"], guidance_scale=s["guidance_scale"],
                             height=s["height"], width=s["width"], output_type="np").images[0]  # fmt: skip
            out.append((image * 255).round().astype(np.uint8))
        return out

    def render_base(self, prompts: list[str], seed: int) -> list[np.ndarray]:
        return render(self.base, self._requests(prompts, seed), self.mode)

    def judge(self, images: list[np.ndarray]) -> list[bool]:
        verdicts = self.judge_part.judge_batch([Image.fromarray(i) for i in images])
        return [bool(self.judge_part.detects(v, self.concept)) for v in verdicts]

    def generation_settings(self) -> dict[str, Any]:
        return self.technique.generation_settings()
