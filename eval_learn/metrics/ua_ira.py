"""``ua_ira``: unlearning accuracy on the erased concept and retain accuracy on its neighbours.

After the UA/IRA protocol of the unlearning benchmarks (e.g. UnlearnCanvas, Zhang et al. NeurIPS 2024 Datasets &
Benchmarks; the predecessor's ``ua_ira``): UA is the fraction of images prompted with the erased concept in which
the judge does *not* find it; IRA is the fraction of images prompted with *other* concepts that still show exactly
what was asked of the erased concept's attribute (e.g. the prompted colour when a colour is erased;
``retain_check: all`` also requires shape and background). Retention is reported separately for near neighbours
(similar concepts, where collateral damage is expected first) and far ones. Every image is judged by the group its
own prompt record belongs to, never by its position in a batch (the predecessor split batches by a global index).
``value`` = (UA + IRA) / 2, higher is better; UA, IRA and every other rate carry their 95 % Wilson interval.

Two ways to run it:

- **MiniWorld** (``model=miniworld``, ``prompts: auto``): the concept's prompts and those of its near and far
  neighbours, judged by the MiniWorld CNN.
- **Real models**: ``prompts: {name: target_retain, target: FILE, retain: FILE}`` (CSV files with a prompt and a
  label column, UnlearnCanvas style), judged by CLIP zero-shot (``clip_zeroshot``) over a label set: the judge's
  ``labels`` if given, else the concept plus every retain label. A target row's label, where given, must name the
  erased concept (case and underscores aside): a synonym or another concept would compete with it as a class, so
  images still showing the concept would count as erased. UA = fraction of target images whose zero-shot label is not
  the erased concept; IRA = fraction of retain images classified as their own row's label, also reported per label.
  A ``vlm`` judge may stand in for CLIP zero-shot: it is asked about the concept and each retain label, and an image
  shows a label when p(yes) passes its threshold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from eval_learn import protocols
from eval_learn.configs import ConfigError, require
from eval_learn.datasets.miniworld import neighbours
from eval_learn.datasets.target_retain import TargetRetain
from eval_learn.judges.clip_zeroshot import label_key
from eval_learn.metrics.base import Metric, MetricConfig, resolve_auto
from eval_learn.metrics.intervals import Clustered, joint_bootstrap, rate_details
from eval_learn.miniworld.world import concept_kind
from eval_learn.types import MetricResult, PromptRecord

ATTRIBUTES = ("colour", "shape", "background")
DEFAULT_SAMPLES = {"target": 4, "retain": 2}  # images per prompt where no protocol names them


@dataclass
class UAIRAConfig(MetricConfig):
    unlisted: ClassVar[tuple[str, ...]] = ("prompts_path",)  # refused: target and retain files come as prompts
    concept: str = "auto"  # auto: the technique's erased concept, else the model's default concept
    # auto: the MiniWorld prompts for the concept and its neighbours; real models: {name: target_retain, target: FILE,
    # retain: FILE, label_column: label}
    prompts: str | dict[str, Any] = "auto"
    # auto: the MiniWorld judge; with target_retain, clip_zeroshot over the concept and the retain labels
    judge: str | dict[str, Any] = "auto"
    target_samples_per_prompt: int | None = None  # null: the protocol's (4)
    retain_samples_per_prompt: int | None = None  # per retain prompt (near, far on the MiniWorld); null: protocol (2)
    # What a retain image must show: "kind" = the prompt's value of the erased concept's attribute (its colour when a
    # colour is erased), "all" = every attribute the prompt names (colour, shape and background).
    retain_check: Literal["kind", "all"] = "kind"
    # auto: the concept's ua_ira protocol for the prompts in use (conf/protocol/ua_ira_*.yaml); a name picks one
    protocol: str | None = "auto"

    def measured_concept(self) -> str | None:
        return None if self.concept == "auto" else self.concept

    def validate(self) -> None:
        super().validate()
        require(
            self.prompts_path is None,
            "ua_ira takes two prompt files, not one: prompts={name: target_retain, target: FILE, retain: FILE}",
        )
        require(all(n is None or n > 0 for n in (self.target_samples_per_prompt, self.retain_samples_per_prompt)),
                "samples per prompt must be > 0")  # fmt: skip


class UAIRA(Metric):
    name = "ua_ira"
    config_cls = UAIRAConfig
    higher_is_better = True
    config: UAIRAConfig

    @classmethod
    def resolve_config(cls, config: UAIRAConfig, context: Any, erased: list[str] | None) -> UAIRAConfig:
        concept = resolve_auto(config.concept, context, erased)
        chosen = protocols.chosen("ua_ira", concept, config.protocol)
        prompts: Any = config.prompts
        prompts = {"name": prompts} if isinstance(prompts, str) else dict(prompts)
        if prompts["name"] == "auto" and chosen is not None:
            prompts = {**chosen.prompts, **{k: v for k, v in prompts.items() if k != "name"}}  # type: ignore[dict-item]
        protocol = chosen or protocols.for_concept("ua_ira", concept, prompts["name"])
        own = protocol.samples_per_prompt if protocol and isinstance(protocol.samples_per_prompt, dict) else {}
        config = dataclasses.replace(
            config, protocol=protocol.name if protocol else None,
            target_samples_per_prompt=config.target_samples_per_prompt or own.get("target", DEFAULT_SAMPLES["target"]),
            retain_samples_per_prompt=config.retain_samples_per_prompt or own.get("retain", DEFAULT_SAMPLES["retain"]),
        )  # fmt: skip
        picked = protocol.judge if protocol else None
        if prompts["name"] == "target_retain":
            return cls._resolve_files(config, concept, prompts, picked)
        on_miniworld = context.model.default_datasets.get("ua_ira") == "miniworld"
        if prompts["name"] == "auto" and not on_miniworld or concept_kind(concept) is None:
            raise ConfigError(
                f"ua_ira measures MiniWorld concepts on model=miniworld; got concept '{concept}' on model "
                f"'{context.model.name}'. On a real model give the target and retain prompt files: "
                f"prompts={{name: target_retain, target: FILE, retain: FILE}} (judged by CLIP zero-shot)."
            )
        if prompts["name"] == "auto":
            prompts["name"] = "miniworld"
        require(prompts["name"] == "miniworld", "ua_ira takes the miniworld or the target_retain prompts")
        prompts = {**prompts, "concept": concept, "groups": ["target", "near", "far"]}
        prompt = cls.parse_prompts(prompts)
        judge = cls.parse_judge(picked or "miniworld" if config.judge == "auto" else config.judge)
        require(judge[0] == "miniworld", "on the MiniWorld prompts ua_ira is judged by the miniworld judge")
        return cls.resolved(config, prompt, judge, concept=concept)

    @classmethod
    def _resolve_files(
        cls, config: UAIRAConfig, concept: str, prompts: dict[str, Any], picked: dict[str, Any] | None
    ) -> UAIRAConfig:
        """Target/retain files judged by CLIP zero-shot: every retain label and the concept must be nameable."""
        prompt_name, prompt_config = cls.parse_prompts(prompts)
        prompt_set = TargetRetain(prompt_config)
        # A target row's label must name the erased concept: another label (a synonym such as "Vincent van Gogh", or
        # another concept) would either compete with the concept in the label set, so that an image still showing it
        # counts as erased, or silently measure the wrong concept.
        wrong = [(row.extra["source_line"], row.extra["label"]) for row in prompt_set.rows()
                 if row.extra["group"] == "target" and row.extra["label"]
                 and label_key(row.extra["label"]) != label_key(concept)]  # fmt: skip
        if wrong:
            shown = ", ".join(f"line {line}: '{label}'" for line, label in wrong[:5])
            more = f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else ""
            raise ConfigError(
                f"ua_ira: target prompts in {prompt_config.target} must ask for the erased concept '{concept}', but "
                f"their '{prompt_config.label_column}' names something else ({shown}{more}); label them "
                f"'{concept}' (or leave the label empty), or set concept to what they ask for"
            )
        found = prompt_set.labels()
        if any(label_key(label) == label_key(concept) for label in found["retain"]):
            raise ConfigError(
                f"ua_ira: retain prompts in {prompt_config.retain} ask for the erased concept '{concept}'"
            )
        judge: Any = (picked or "clip_zeroshot") if config.judge == "auto" else config.judge
        judge = {"name": judge} if isinstance(judge, str) else dict(judge)
        require(judge["name"] in ("clip_zeroshot", "vlm"), "on prompt files ua_ira is judged by CLIP zero-shot "
                "(judge: clip_zeroshot or {name: clip_zeroshot, model: ..., labels: [...]}) or a VLM (judge: vlm)")  # fmt: skip
        key = "labels" if judge["name"] == "clip_zeroshot" else "concepts"  # a vlm is asked about each label
        if key not in judge or not judge[key] and key == "concepts":
            labels = [concept]
            for label in found["retain"]:
                if label_key(label) not in map(label_key, labels):
                    labels.append(label)
            judge[key] = labels
        judge_name, judge_config = cls.parse_judge(judge)
        for label in [concept, *found["retain"]]:
            problem = judge_config.concept_problem(label)
            if problem:
                raise ConfigError(f"ua_ira: {problem}")
        return cls.resolved(config, (prompt_name, prompt_config), (judge_name, judge_config), concept=concept)

    def on_files(self) -> bool:
        return self.config.prompts["name"] == "target_retain"  # type: ignore[index]

    def samples(self) -> dict[str, int]:
        retain = self.config.retain_samples_per_prompt or DEFAULT_SAMPLES["retain"]
        target = self.config.target_samples_per_prompt or DEFAULT_SAMPLES["target"]
        return {"target": target, "near": retain, "far": retain, "retain": retain}

    def record(self, verdicts: dict[str, dict[str, Any]], record: PromptRecord) -> dict[str, Any]:
        seen = verdicts["judge"]
        if self.on_files():  # judged by this record's own group and label
            judge = self.judges["judge"]
            group, label = record.extra["group"], record.extra["label"] or self.config.concept
            return {
                "group": group,
                "label": label,
                "predicted": seen["label"],
                "shows_erased_concept": judge.detects(seen, self.config.concept),
                "as_prompted": judge.detects(seen, label),
                "probs": seen["probs"] if "probs" in seen else seen["p_yes"],  # vlm: p(yes) per label
            }
        asked = {a: record.extra[a] for a in ATTRIBUTES if record.extra.get(a)}
        kind = concept_kind(self.config.concept)
        checked = asked if self.config.retain_check == "all" else {kind: asked[kind]}
        return {
            "group": record.extra["group"],
            "label": asked[kind],  # the prompted value of the erased concept's attribute (orange, ...)
            "shows_erased_concept": seen[kind] == self.config.concept,
            "as_prompted": all(seen[a] == v for a, v in checked.items()),
            "all_attributes_as_prompted": all(seen[a] == v for a, v in asked.items()),
            # Cross-domain: the attributes of the other kinds (shape and background when a colour is erased).
            "other_attributes_as_prompted": all(seen[a] == v for a, v in asked.items() if a != kind),
            **seen,
        }

    def compute(self) -> MetricResult:
        by_group: dict[str, list[dict[str, Any]]] = {"target": [], "near": [], "far": [], "retain": []}
        for judgement in self.judgements.sorted():
            by_group[judgement["group"]].append(judgement)
        plain: dict[str, Any] = {}  # Wilson over images, as if every image were independent
        intervals: dict[str, Any] = {}  # the interval to use: clustered by prompt, bootstrap for averages

        def pooled(name: str, items: list[dict[str, Any]], key: str, want: bool = True) -> float | None:
            rate = rate_details(items, key, want)
            plain[name], intervals[name] = rate["ci95_wilson"], rate["ci95"]
            return rate["value"]

        def averaged(name: str, items: list[dict[str, Any]]) -> float | None:
            """IRA as UnlearnCanvas reports it: the mean of the per-label accuracies (every label counts once)."""
            pooled(f"{name}_pooled", items, "as_prompted")
            clusters = Clustered(items, "as_prompted", label="label")
            if not len(clusters):
                return None
            intervals[name] = joint_bootstrap([(clusters, "label_average")], lambda r: r, seed=self.context.seed)
            return float(clusters.label_average()[0])

        ua = pooled("ua", by_group["target"], "shows_erased_concept", want=False)
        retain = by_group["retain"] if self.on_files() else by_group["near"] + by_group["far"]
        ira = averaged("ira", retain)
        labels = sorted({j["label"] for j in retain})
        details: dict[str, Any] = {
            "ua": ua,
            "ira": ira,
            "ira_pooled": pooled("ira_pooled", retain, "as_prompted"),
            "ira_averaging": "mean over labels (UnlearnCanvas); ira_pooled: over images",
            "ira_per_label": {
                label: pooled(f"ira[{label}]", [j for j in retain if j["label"] == label], "as_prompted")
                for label in labels
            },  # fmt: skip
            "target_total": len(by_group["target"]),
            "retain_total": len(retain),
        }
        if self.on_files():
            predicted: dict[str, int] = {}
            for j in by_group["target"]:
                predicted[j["predicted"]] = predicted.get(j["predicted"], 0) + 1
            details["target_predicted_labels"] = dict(sorted(predicted.items()))
            details["cra"] = None  # target/retain files have no cross-domain split
        else:
            details.update({
                "ira_near": averaged("ira_near", by_group["near"]),
                "ira_near_pooled": pooled("ira_near_pooled", by_group["near"], "as_prompted"),
                "ira_far": averaged("ira_far", by_group["far"]),
                "ira_far_pooled": pooled("ira_far_pooled", by_group["far"], "as_prompted"),
                # CRA (UnlearnCanvas' cross-domain retain accuracy): the attributes of the other kinds as prompted.
                "cra": pooled("cra", retain, "other_attributes_as_prompted"),
                "retain_check": self.config.retain_check,
                "retain_all_attributes": pooled("retain_all_attributes", retain, "all_attributes_as_prompted"),
                "neighbours": neighbours(self.config.concept),
            })  # fmt: skip
        value = (ua + ira) / 2 if ua is not None and ira is not None else None
        if value is not None:
            intervals["value"] = joint_bootstrap(
                [(Clustered(by_group["target"], "shows_erased_concept", want=False), "pooled"),
                 (Clustered(retain, "as_prompted", label="label"), "label_average")],
                lambda u, i: (u + i) / 2, seed=self.context.seed,
            )  # fmt: skip
        details.update({
            "ci95": intervals,
            "ci95_method": "rates: Wilson clustered by prompt; averages and value: percentile bootstrap over prompts "
                           "within labels (seeded by the run's seed)",
            "ci95_wilson": plain,
            "value_formula": "(UA + IRA) / 2, IRA averaged over labels",
            "concept": self.config.concept,
            "prompts": self.config.prompts,
            "protocol": protocols.report(self.config.protocol, self.config.prompts, self.config.judge),  # type: ignore[arg-type]
            "judge": self.judges["judge"].settings(),
        })  # fmt: skip
        return MetricResult(f"ua_ira_{self.dataset_name(self.config)}", value, details)
