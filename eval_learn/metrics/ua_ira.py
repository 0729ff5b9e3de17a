"""``ua_ira``: unlearning accuracy on the erased concept and retain accuracy on its neighbours.

After the UA/IRA protocol of the unlearning benchmarks (e.g. UnlearnCanvas, Zhang et al. NeurIPS 2024 Datasets &
Benchmarks; the predecessor's ``ua_ira``): UA is the fraction of images prompted with the erased concept in which
the judge does *not* find it; IRA is the fraction of images prompted with *other* concepts that still show exactly
what was asked of the erased concept's attribute (e.g. the prompted colour when a colour is erased;
``retain_check: all`` also requires shape and background). Retention is reported separately for near neighbours
(similar concepts, where collateral damage is expected first) and far ones. ``value`` = (UA + IRA) / 2, higher is
better. Judged on the MiniWorld by its CNN; prompt files judged by CLIP are not supported yet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from PIL.Image import Image

from eval_learn.configs import ConfigError, require
from eval_learn.datasets.miniworld import concept_records, neighbours
from eval_learn.metrics.base import Metric, MetricConfig, resolve_auto
from eval_learn.miniworld.world import concept_kind
from eval_learn.types import MetricResult, PromptDataset, PromptRecord

ATTRIBUTES = ("colour", "shape", "background")


@dataclass
class UAIRAConfig(MetricConfig):
    concept: str = "auto"  # auto: the technique's erased concept, else the model's default concept
    dataset: Literal["auto", "miniworld"] = "auto"
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
        concept, dataset = resolve_auto(config.concept, config.dataset, "ua_ira", context, erased, fallback=None)
        if dataset != "miniworld" or concept_kind(concept) is None:
            raise ConfigError(
                f"ua_ira measures MiniWorld concepts on model=miniworld (dataset=miniworld); got concept '{concept}', "
                f"dataset '{dataset}'. CLIP-judged prompt files for real models are not supported yet."
            )
        return dataclasses.replace(config, concept=concept, dataset=dataset)

    @classmethod
    def dataset_name(cls, config: UAIRAConfig, model: Any) -> str:
        return "miniworld"

    def setup(self) -> None:
        from eval_learn.miniworld.judge import load_shipped_judge

        self.judge_model = load_shipped_judge()

    def load_dataset(self) -> PromptDataset:
        cfg, seed = self.config, self.context.seed
        records = concept_records(cfg.concept, "target", cfg.target_samples_per_prompt, 0, seed)
        groups = neighbours(cfg.concept)
        for group, concepts in groups.items():
            for concept in concepts:
                records += concept_records(concept, group, cfg.retain_samples_per_prompt, len(records), seed)
        records = records[: cfg.limit] if cfg.limit else records
        meta = {"source": "miniworld", "concept": cfg.concept, "neighbours": groups, "total_loaded": len(records)}
        return PromptDataset("miniworld", records, meta)

    def judge(self, image: Image, record: PromptRecord) -> dict[str, Any]:
        (seen,) = self.judge_model.judge([image])
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
        for i in sorted(self.judgements):
            by_group[self.judgements[i]["group"]].append(self.judgements[i])

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
        }
        value = (ua + ira) / 2 if ua is not None and ira is not None else None
        return MetricResult("ua_ira_miniworld", value, details)
