"""``miniworld``: the MiniWorld CNN that names an image's colour, shape and background (see :mod:`eval_learn.miniworld`).

Its verdict is the three attributes with their confidences; a metric decides what they mean (the erased colour seen,
the image as prompted). ``weights`` points at another judge folder (one written by ``eval_learn.miniworld.train``);
by default the judge shipped with the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL.Image import Image

from eval_learn.configs import require
from eval_learn.judges.base import Judge, JudgeConfig


@dataclass
class MiniWorldJudgeConfig(JudgeConfig):
    weights: str | None = None  # a judge folder (judge.safetensors + judge.json); null = the shipped judge

    def validate(self) -> None:
        if self.weights is not None:
            require((Path(self.weights) / "judge.safetensors").is_file(),
                    f"weights '{self.weights}' is not a MiniWorld judge folder (no judge.safetensors in it)")  # fmt: skip

    def folder(self) -> Path:
        from eval_learn.models.locations import MINIWORLD_DIR

        return Path(self.weights) if self.weights else MINIWORLD_DIR / "judge"


class MiniWorldJudgePart(Judge):
    name = "miniworld"
    config_cls = MiniWorldJudgeConfig
    config: MiniWorldJudgeConfig

    def load(self) -> None:
        from eval_learn.miniworld.judge import MiniWorldJudge

        self._judge = MiniWorldJudge(self.config.folder(), device=self.device)

    def settings(self) -> dict[str, Any]:
        from eval_learn.miniworld.judge import judge_settings

        return judge_settings(self.config.folder())

    def judge_batch(self, images: list[Image]) -> list[dict[str, Any]]:
        return self._judge.judge(images)

    @classmethod
    def supports(cls, concept: str) -> bool:
        from eval_learn.miniworld.world import concept_kind

        return concept_kind(concept) is not None

    def detects(self, verdict: dict[str, Any], concept: str) -> bool:
        from eval_learn.miniworld.world import concept_kind

        return verdict[concept_kind(concept)] == concept  # type: ignore[index]
