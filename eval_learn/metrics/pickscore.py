"""``pickscore``: how much people would prefer the images for their prompts — the mean PickScore (Kirstain et al.,
"Pick-a-Pic: An Open Dataset of User Preferences for Text-to-Image Generation", NeurIPS 2023) over images, with the
image's own prompt as the text.

Each image's score is ``logit_scale.exp() · cos(image, prompt)`` under the ``pickscore`` judge (the release's
``calc_probs`` before its softmax over competing images); the value is the mean over images with the standard
deviation and a 95 % Student-t interval of the mean. Higher is better. Like ``clip_score`` it measures what erasure
costs on ordinary prompts (COCO-10k captions by default), so it is not tied to the erased concept. Prompts longer than
77 tokens are truncated (end token kept; the release's processor truncates the same way) and counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eval_learn.judges.pickscore import PickScoreJudge
from eval_learn.metrics.mean_score import MeanScore
from eval_learn.types import PromptRecord


class PickScore(MeanScore):
    name = "pickscore"
    judge_cls = PickScoreJudge
    formula = "mean over images of logit_scale.exp() * cos(image, prompt)"

    def reset(self) -> None:
        super().reset()
        self._texts: dict[str, tuple[np.ndarray, bool]] = {}  # prompt → (embedding, truncated), this process

    def text(self, prompt: str) -> tuple[np.ndarray, bool]:
        if prompt not in self._texts:
            self._texts[prompt] = self.judges["judge"].embed_text(prompt)  # type: ignore[attr-defined]
        return self._texts[prompt]

    def record(self, verdicts: dict[str, dict[str, Any]], record: PromptRecord) -> dict[str, Any]:
        text, truncated = self.text(record.prompt)
        image = np.asarray(verdicts["judge"]["embedding"], dtype=np.float64)
        cosine = float(np.dot(image, text.astype(np.float64)))
        scale = self.judges["judge"].logit_scale()  # type: ignore[attr-defined]
        return {"score": scale * cosine, "cosine": cosine, "truncated": truncated}

    def extra_details(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "truncated_prompts": sum(bool(r["truncated"]) for r in records),
            "pickscore_model": self.judges["judge"].config.model,  # type: ignore[attr-defined]
            "logit_scale": self.judges["judge"].logit_scale(),  # type: ignore[attr-defined]
        }
