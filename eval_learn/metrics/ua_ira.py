"""``ua_ira``: unlearning accuracy on the erased concept and retain accuracy on its neighbours.

After the UA/IRA protocol of the unlearning benchmarks (e.g. UnlearnCanvas, Zhang et al. NeurIPS 2024 Datasets &
Benchmarks; the predecessor's ``ua_ira``): UA is the fraction of images prompted with the erased concept in which
the judge does *not* find it; IRA is the fraction of images prompted with *other* concepts that still show exactly
what was asked of the erased concept's attribute (e.g. the prompted colour when a colour is erased;
``retain_check: all`` also requires shape and background). Retention is reported separately for near neighbours
(similar concepts, where collateral damage is expected first) and far ones. Every image is judged by the group its
own prompt record belongs to, never by its position in a batch. ``value`` = (UA + IRA) / 2, higher is better.
Judged on the MiniWorld by its CNN; prompt files judged by CLIP are not supported yet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from eval_learn.configs import ConfigError, require
from eval_learn.datasets.miniworld import neighbours
from eval_learn.metrics.base import Metric, MetricConfig, part_dict, resolve_auto
from eval_learn.miniworld.world import concept_kind
from eval_learn.registry import JUDGES, PROMPT_SETS, parse_part
from eval_learn.types import MetricResult, PromptRecord

ATTRIBUTES = ("colour", "shape", "background")


@dataclass
class UAIRAConfig(MetricConfig):
    concept: str = "auto"  # auto: the technique's erased concept, else the model's default concept
    prompts: str | dict[str, Any] = "auto"  # auto: the MiniWorld prompts for the concept and its neighbours
    judge: str | dict[str, Any] = "auto"  # auto: the MiniWorld judge
    target_samples_per_prompt: int = 4
    retain_samples_per_prompt: int = 2
    # What a retain image must show: "kind" = the prompt's value of the erased concept's attribute (its colour when a
    # colour is erased), "all" = every attribute the prompt names (colour, shape and background).
    retain_check: Literal["kind", "all"] = "kind"

    def measured_concept(self) -> str | None:
        return None if self.concept == "auto" else self.concept

    def validate(self) -> None:
        super().validate()
        require(self.prompts_path is None, "ua_ira builds its prompts itself; prompts_path is not supported yet")
        require(self.target_samples_per_prompt > 0 and self.retain_samples_per_prompt > 0,
                "samples per prompt must be > 0")  # fmt: skip


class UAIRA(Metric):
    name = "ua_ira"
    config_cls = UAIRAConfig
    higher_is_better = True
    config: UAIRAConfig

    @classmethod
    def resolve_config(cls, config: UAIRAConfig, context: Any, erased: list[str] | None) -> UAIRAConfig:
        concept = resolve_auto(config.concept, context, erased)
        on_miniworld = context.model.default_datasets.get("ua_ira") == "miniworld"
        if config.prompts == "auto" and not on_miniworld or concept_kind(concept) is None:
            raise ConfigError(
                f"ua_ira measures MiniWorld concepts on model=miniworld; got concept '{concept}' on model "
                f"'{context.model.name}'. CLIP-judged prompt files for real models are not supported yet."
            )
        prompts: Any = {"name": "miniworld"} if config.prompts == "auto" else config.prompts
        prompts = {"name": prompts} if isinstance(prompts, str) else dict(prompts)
        require(prompts["name"] == "miniworld", "ua_ira supports the miniworld prompts only (yet)")
        prompts = {**prompts, "concept": concept, "groups": ["target", "near", "far"]}
        prompt_name, prompt_config = parse_part(PROMPT_SETS, prompts, "metric 'ua_ira' prompts")
        judge_name, judge_config = parse_part(JUDGES, "miniworld" if config.judge == "auto" else config.judge,
                                              "metric 'ua_ira' judge")  # fmt: skip
        require(judge_name == "miniworld", "ua_ira supports the miniworld judge only (yet)")
        return dataclasses.replace(
            config, concept=concept, prompts=part_dict(prompt_name, prompt_config),
            judge=part_dict(judge_name, judge_config),
        )  # fmt: skip

    def samples(self) -> dict[str, int]:
        retain = self.config.retain_samples_per_prompt
        return {"target": self.config.target_samples_per_prompt, "near": retain, "far": retain}

    def record(self, verdicts: dict[str, dict[str, Any]], record: PromptRecord) -> dict[str, Any]:
        seen = verdicts["judge"]
        asked = {a: record.extra[a] for a in ATTRIBUTES if record.extra.get(a)}
        kind = concept_kind(self.config.concept)
        checked = asked if self.config.retain_check == "all" else {kind: asked[kind]}
        return {
            "group": record.extra["group"],
            "shows_erased_concept": seen[kind] == self.config.concept,
            "as_prompted": all(seen[a] == v for a, v in checked.items()),
            "all_attributes_as_prompted": all(seen[a] == v for a, v in asked.items()),
            **seen,
        }

    def compute(self) -> MetricResult:
        by_group: dict[str, list[dict[str, Any]]] = {"target": [], "near": [], "far": []}
        for judgement in self.judgements.sorted():
            by_group[judgement["group"]].append(judgement)

        def rate(items: list[dict[str, Any]], key: str, want: bool = True) -> float | None:
            return sum(j[key] == want for j in items) / len(items) if items else None

        ua = rate(by_group["target"], "shows_erased_concept", want=False)
        retain = by_group["near"] + by_group["far"]
        ira = rate(retain, "as_prompted")
        details = {
            "ua": ua,
            "ira": ira,
            "ira_near": rate(by_group["near"], "as_prompted"),
            "ira_far": rate(by_group["far"], "as_prompted"),
            "retain_check": self.config.retain_check,
            "retain_all_attributes": rate(retain, "all_attributes_as_prompted"),
            "target_total": len(by_group["target"]),
            "retain_total": len(retain),
            "concept": self.config.concept,
            "neighbours": neighbours(self.config.concept),
            "judge": self.judges["judge"].settings(),
        }
        value = (ua + ira) / 2 if ua is not None and ira is not None else None
        return MetricResult("ua_ira_miniworld", value, details)
