"""``aesthetic``: the mean LAION aesthetic score of the images (the ``aesthetic`` judge: an MLP on the CLIP ViT-L/14
image embedding, christophschuhmann/improved-aesthetic-predictor) with its 95 % Student-t interval; higher is better.
HUB (ICCV 2025) reports it as the quality of the images a technique still makes. The prompts are COCO-10k captions
by default (what erasure costs on ordinary prompts); any prompt set can be given.
"""

from __future__ import annotations

from typing import Any

from eval_learn.judges.aesthetic import AestheticJudge
from eval_learn.metrics.mean_score import MeanScore
from eval_learn.types import PromptRecord


class Aesthetic(MeanScore):
    name = "aesthetic"
    judge_cls = AestheticJudge
    formula = "mean over images of the aesthetic MLP on the L2-normalised CLIP image embedding"

    def record(self, verdicts: dict[str, dict[str, Any]], record: PromptRecord) -> dict[str, Any]:
        return {"score": verdicts["judge"]["aesthetic"]}
