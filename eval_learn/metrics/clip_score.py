"""``clip_score``: how well images still match their captions — CLIPScore (Hessel et al., "CLIPScore: A Reference-free
Evaluation Metric for Image Captioning", EMNLP 2021, arXiv:2104.08718), averaged over images.

Per image, CLIP-S(c, v) = w · max(cos(E_text(c), E_image(v)), 0) with the image's own prompt as the caption c.
``scale`` names the convention, because erasure papers report three and they are not comparable with each other:

- ``hessel`` (default): w = 2.5, as Hessel et al. define it (their reference code also prefixes captions with
  "A photo depicts": ``caption_prefix``);
- ``x100``: w = 100 — torchmetrics' ``CLIPScore``, the "CLIP score ×100" of MACE-style COCO-30k tables (31.34 for
  SD-1.4 with ViT-L/14);
- ``cosine``: w = 1 — the raw cosine of the AdvUnlearn / UnlearnDiffAtk COCO-10k tables (0.302 for ESD), which use
  ``openai/clip-vit-base-patch32`` (``judge={name: clip, model: openai/clip-vit-base-patch32}``).

Higher is better: clip_score measures what erasure costs on ordinary prompts (COCO-10k captions by default), for any
technique, so it is not tied to the erased concept. A caption longer than the text encoder's context (77 tokens) is
truncated, as every CLIPScore implementation must; the count is reported. The value comes with the standard
deviation over images and a 95 % Student-t interval of the mean.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from eval_learn.configs import ConfigError
from eval_learn.judges.clip import CLIPJudge
from eval_learn.metrics.base import Metric, MetricConfig, part_dict, requested_prompts
from eval_learn.registry import JUDGES, PROMPT_SETS, parse_part
from eval_learn.types import MetricResult, PromptRecord

log = logging.getLogger(__name__)

WEIGHTS = {"hessel": 2.5, "x100": 100.0, "cosine": 1.0}


@dataclass
class CLIPScoreConfig(MetricConfig):
    # auto: coco_10k (COCO captions with their seeds). A prompt set name or {name: ..., <its settings>}.
    prompts: str | dict[str, Any] = "auto"
    # A CLIP judge: clip, or {name: clip, model: <hub id or folder>, revision: ..., dtype: ...}.
    judge: str | dict[str, Any] = "clip"
    scale: Literal["hessel", "x100", "cosine"] = "hessel"  # w = 2.5 | 100 | 1 in w · max(cos, 0)
    caption_prefix: str = ""  # prepended to every caption for the text embedding ("A photo depicts " in Hessel's code)


def t_quantile(p: float, dof: int) -> float:
    """Student t quantile (p > 0.5) by bisection on its CDF, integrated with Simpson's rule (no scipy)."""
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def pdf(x: float) -> float:
        return math.exp(log_norm - (dof + 1) / 2 * math.log1p(x * x / dof))

    def cdf(t: float, steps: int = 2000) -> float:
        h = t / steps
        inner = sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
        return 0.5 + h / 3 * (pdf(0.0) + inner + pdf(t))

    low, high = 0.0, 64.0  # t(0.975, 1) = 12.7: the bracket holds for p <= 0.995
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def mean_interval(values: list[float], level: float = 0.95) -> dict[str, Any]:
    """Mean, sample standard deviation and the Student-t interval of the mean; sums are exactly rounded (fsum), so
    the result does not depend on the order the values were recorded in."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return {"mean": mean, "std": None, "n": n, "ci95": None}
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci95": [mean - half, mean + half]}


class CLIPScore(Metric):
    name = "clip_score"
    config_cls = CLIPScoreConfig
    higher_is_better = True
    config: CLIPScoreConfig

    @classmethod
    def resolve_config(cls, config: CLIPScoreConfig, context: Any, erased: list[str] | None) -> CLIPScoreConfig:
        prompts = requested_prompts(config, {"name": "coco_10k"})
        prompt_name, prompt_config = parse_part(PROMPT_SETS, prompts, "metric 'clip_score' prompts")
        judge_name, judge_config = parse_part(JUDGES, config.judge, "metric 'clip_score' judge")
        if not issubclass(JUDGES.get(judge_name), CLIPJudge):
            raise ConfigError(f"clip_score needs a CLIP judge (judge: clip), not '{judge_name}'")
        return dataclasses.replace(config, prompts=part_dict(prompt_name, prompt_config),
                                   judge=part_dict(judge_name, judge_config))  # fmt: skip

    def reset(self) -> None:
        super().reset()
        self._captions: dict[str, tuple[np.ndarray, bool]] = {}  # caption → (embedding, truncated), this process

    def caption(self, prompt: str) -> tuple[np.ndarray, bool]:
        text = self.config.caption_prefix + prompt
        if text not in self._captions:
            self._captions[text] = self.judges["judge"].embed_text(text)  # type: ignore[attr-defined]
        return self._captions[text]

    def record(self, verdicts: dict[str, dict[str, Any]], record: PromptRecord) -> dict[str, Any]:
        text, truncated = self.caption(record.prompt)
        image = np.asarray(verdicts["judge"]["embedding"], dtype=np.float64)
        cosine = float(np.dot(image, text.astype(np.float64)))
        return {"score": WEIGHTS[self.config.scale] * max(cosine, 0.0), "cosine": cosine, "truncated": truncated}

    def compute(self) -> MetricResult:
        records = self.judgements.sorted()
        judge = self.judges["judge"]
        name = f"clip_score_{self.dataset_name(self.config)}"
        details: dict[str, Any] = {
            "scale": self.config.scale,
            "formula": f"{WEIGHTS[self.config.scale]:g} * max(cos(image, caption), 0), mean over images",
            "caption_prefix": self.config.caption_prefix,
            "interval": "95 % Student-t interval of the mean (n - 1 degrees of freedom)",
            "truncated_captions": sum(bool(r["truncated"]) for r in records),
            "negative_cosines": sum(r["cosine"] < 0 for r in records),
            "prompts": self.config.prompts,
            "clip_model": judge.config.model,
            "judge": judge.settings(),
        }
        if not records:
            return MetricResult(name, None, {**details, "n": 0, "error": "no images were judged"})
        summary = mean_interval([r["score"] for r in records])
        return MetricResult(name, summary["mean"], {**summary, **details})
