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

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval_learn.configs import ConfigError
from eval_learn.judges.pickscore import PickScoreJudge
from eval_learn.metrics.base import Metric, MetricConfig, part_dict, requested_prompts
from eval_learn.metrics.clip_score import mean_interval
from eval_learn.registry import JUDGES, PROMPT_SETS, parse_part
from eval_learn.types import MetricResult, PromptRecord


@dataclass
class PickScoreMetricConfig(MetricConfig):
    # auto: coco_10k (COCO captions with their seeds). A prompt set name or {name: ..., <its settings>}.
    prompts: str | dict[str, Any] = "auto"
    # {name: pickscore, model: <hub id or folder>, processor: <hub id or folder, null: the model's>, dtype: ...}
    judge: str | dict[str, Any] = "pickscore"


class PickScore(Metric):
    name = "pickscore"
    config_cls = PickScoreMetricConfig
    higher_is_better = True
    config: PickScoreMetricConfig

    @classmethod
    def resolve_config(cls, config: PickScoreMetricConfig, context: Any, erased: list[str] | None) -> Any:
        prompts = requested_prompts(config, {"name": "coco_10k"})
        prompt_name, prompt_config = parse_part(PROMPT_SETS, prompts, "metric 'pickscore' prompts")
        judge_name, judge_config = parse_part(JUDGES, config.judge, "metric 'pickscore' judge")
        if not issubclass(JUDGES.get(judge_name), PickScoreJudge):
            raise ConfigError(f"pickscore needs the PickScore judge (judge: pickscore), not '{judge_name}'")
        return dataclasses.replace(config, prompts=part_dict(prompt_name, prompt_config),
                                   judge=part_dict(judge_name, judge_config))  # fmt: skip

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

    def compute(self) -> MetricResult:
        records = self.judgements.sorted()
        judge = self.judges["judge"]
        name = f"pickscore_{self.dataset_name(self.config)}"
        details: dict[str, Any] = {
            "formula": "mean over images of logit_scale.exp() * cos(image, prompt)",
            "interval": "95 % Student-t interval of the mean (n - 1 degrees of freedom)",
            "truncated_prompts": sum(bool(r["truncated"]) for r in records),
            "prompts": self.config.prompts,
            "pickscore_model": judge.config.model,  # type: ignore[attr-defined]
            "judge": judge.settings(),
        }
        if not records:
            return MetricResult(name, None, {**details, "n": 0, "error": "no images were judged"})
        details["logit_scale"] = judge.logit_scale()  # type: ignore[attr-defined]
        summary = mean_interval([r["score"] for r in records])
        return MetricResult(name, summary["mean"], {**summary, **details})
