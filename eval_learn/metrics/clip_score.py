"""``clip_score``: how well images still match their captions — CLIPScore (Hessel et al., "CLIPScore: A Reference-free
Evaluation Metric for Image Captioning", EMNLP 2021, arXiv:2104.08718), averaged over images, with the image's own
prompt as the caption.

Erasure papers report CLIP scores under conventions that differ in the CLIP model, a caption prefix, the weight and
where (if anywhere) the score is clamped at 0; their numbers are not comparable with each other. ``scale`` names the
convention, each following a released script (the judge's model defaults to that script's CLIP; a ``model`` given
in the judge wins and is recorded):

- ``hessel`` (default): clipscore.py of jmhessel/clipscore — ViT-B/32, captions prefixed "A photo depicts ",
  2.5 · max(cos, 0) per image. The default because it is the metric's definition, with a released reference.
- ``mace``: MACE's metrics/evaluate_clip_score.py — ViT-B/32 ``logits_per_image``, i.e. the model's logit scale
  (100 for OpenAI's CLIPs) · cos, no clamp.
- ``unlearndiffatk``: UnlearnDiffAtk's src/tasks/utils/metrics/clip_score.py — torchmetrics' ``clip_score`` with
  ViT-L/14: 100 · cos per image, the *mean* clamped at 0.
- ``advunlearn``: T2IBenchmark's ``calculate_clip_score`` (boomb0om/text2image-benchmark), which AdvUnlearn's COCO
  tables use — ViT-B/32, the mean cosine, no clamp.
- ``x100``, ``cosine``: w · max(cos, 0) per image with w = 100 or 1 on ViT-L/14; no release's rule, kept for
  earlier configs.

Higher is better: clip_score measures what erasure costs on ordinary prompts (COCO-10k captions by default), for any
technique, so it is not tied to the erased concept. A caption longer than the text encoder's context (77 tokens) is
truncated with its end-of-text token kept (MACE's and T2IBenchmark's scripts stop with an error instead, torchmetrics
cuts the end-of-text token off); the count is reported. The value comes with the standard deviation over images and
a 95 % Student-t interval of the mean.
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
from eval_learn.metrics.base import Metric, MetricConfig, requested_prompts
from eval_learn.registry import JUDGES
from eval_learn.types import MetricResult, PromptRecord

log = logging.getLogger(__name__)

ViT_B32, ViT_L14 = "openai/clip-vit-base-patch32", "openai/clip-vit-large-patch14"


@dataclass(frozen=True)
class Convention:
    model: str  # the CLIP the source scores with
    prefix: str  # prepended to every caption
    weight: float | None  # None: the model's own logit scale (logits_per_image)
    clamp: Literal["image", "mean", "none"]  # where max(., 0) applies
    source: str


CONVENTIONS = {
    "hessel": Convention(ViT_B32, "A photo depicts ", 2.5, "image", "jmhessel/clipscore clipscore.py @10364652"),
    "mace": Convention(ViT_B32, "", None, "none", "Shilin-LU/MACE metrics/evaluate_clip_score.py @057e7a6e"),
    "unlearndiffatk": Convention(ViT_L14, "", 100.0, "mean", "OPTML-Group/Diffusion-MU-Attack "
                                 "src/tasks/utils/metrics/clip_score.py @5a3e5d37 (torchmetrics clip_score)"),
    "advunlearn": Convention(ViT_B32, "", 1.0, "none", "boomb0om/text2image-benchmark T2IBenchmark/pipelines.py "
                             "@532229f6 (calculate_clip_score)"),
    "x100": Convention(ViT_L14, "", 100.0, "image", "no release: 100 * max(cos, 0) per image"),
    "cosine": Convention(ViT_L14, "", 1.0, "image", "no release: max(cos, 0) per image"),
}  # fmt: skip


@dataclass
class CLIPScoreConfig(MetricConfig):
    # auto: coco_10k (COCO captions with their seeds). A prompt set name or {name: ..., <its settings>}.
    prompts: str | dict[str, Any] = "auto"
    # A CLIP judge: clip, or {name: clip, model: <hub id or folder>, revision: ..., dtype: ...}.
    judge: str | dict[str, Any] = "clip"
    # the convention (CLIP model, prefix, weight, clamp): hessel | mace | unlearndiffatk | advunlearn | x100 | cosine
    scale: Literal["hessel", "mace", "unlearndiffatk", "advunlearn", "x100", "cosine"] = "hessel"
    caption_prefix: str | None = (
        None  # prepended to every caption; null: the convention's ("A photo depicts " for hessel)
    )


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
        prompt = cls.parse_prompts(prompts)
        judge_name, judge_config = cls.parse_judge(config.judge)
        if not issubclass(JUDGES.get(judge_name), CLIPJudge):
            raise ConfigError(f"clip_score needs a CLIP judge (judge: clip), not '{judge_name}'")
        convention = CONVENTIONS[config.scale]
        if isinstance(config.judge, str) or "model" not in config.judge:  # the convention's CLIP unless one is named
            judge_config = dataclasses.replace(judge_config, model=convention.model)
        prefix = convention.prefix if config.caption_prefix is None else config.caption_prefix
        return cls.resolved(config, prompt, (judge_name, judge_config), caption_prefix=prefix)

    def reset(self) -> None:
        super().reset()
        self._captions: dict[str, tuple[np.ndarray, bool]] = {}  # caption → (embedding, truncated), this process

    def caption(self, prompt: str) -> tuple[np.ndarray, bool]:
        text = (self.config.caption_prefix or "") + prompt
        if text not in self._captions:
            self._captions[text] = self.judges["judge"].embed_text(text)  # type: ignore[attr-defined]
        return self._captions[text]

    def record(self, verdicts: dict[str, dict[str, Any]], record: PromptRecord) -> dict[str, Any]:
        text, truncated = self.caption(record.prompt)
        image = np.asarray(verdicts["judge"]["embedding"], dtype=np.float64)
        cosine = float(np.dot(image, text.astype(np.float64)))
        score = self.weight() * cosine
        if CONVENTIONS[self.config.scale].clamp == "image":
            score = max(score, 0.0)
        return {"score": score, "cosine": cosine, "truncated": truncated}

    def weight(self) -> float:
        weight = CONVENTIONS[self.config.scale].weight
        return self.judges["judge"].logit_scale() if weight is None else weight  # type: ignore[attr-defined]

    def compute(self) -> MetricResult:
        records = self.judgements.sorted()
        judge = self.judges["judge"]
        name = f"clip_score_{self.dataset_name(self.config)}"
        convention = CONVENTIONS[self.config.scale]
        weight = "logit_scale" if convention.weight is None else f"{convention.weight:g}"
        formula = {
            "image": f"mean over images of max({weight} * cos(image, caption), 0)",
            "mean": f"max(mean over images of {weight} * cos(image, caption), 0)",
            "none": f"mean over images of {weight} * cos(image, caption)",
        }[convention.clamp]
        details: dict[str, Any] = {
            "scale": self.config.scale,
            "source": convention.source,
            "convention_model": convention.model,
            "formula": formula,
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
        if convention.weight is None:
            details["logit_scale"] = self.weight()
        value = max(summary["mean"], 0.0) if convention.clamp == "mean" else summary["mean"]
        return MetricResult(name, value, {**summary, **details})
