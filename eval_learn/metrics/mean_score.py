"""A metric whose value is the mean of one per-image score with its 95 % Student-t interval (``pickscore``,
``aesthetic``, ``tifa``): the prompt set (COCO-10k captions by default), the one judge class it takes and how an image
is scored are all that differ.

Its protocols (``conf/protocol/*.yaml`` with ``metric: pickscore`` ...) set ``prompts`` and ``judge``: ``protocol:
auto`` takes the metric's default protocol if it has one, a name picks one; ``prompts: auto`` and ``judge: auto`` (or
``{name: auto, <settings>}``, e.g. the aesthetic judge's weights) are then the protocol's, and the report records the
protocol with every setting the run took differently from it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from eval_learn import protocols
from eval_learn.configs import ConfigError
from eval_learn.judges.base import Judge
from eval_learn.metrics.base import Metric, MetricConfig, part_dict, requested_prompts
from eval_learn.metrics.clip_score import mean_interval
from eval_learn.registry import JUDGES, PROMPT_SETS, parse_part
from eval_learn.types import MetricResult


@dataclass
class MeanScoreConfig(MetricConfig):
    # auto: coco_10k (COCO captions with their seeds). A prompt set name or {name: ..., <its settings>}.
    prompts: str | dict[str, Any] = "auto"
    # auto: the protocol's judge, else the metric's own; {name: auto, <settings>} adds settings; {name: ..., ...}
    judge: str | dict[str, Any] = "auto"
    # auto: the metric's default protocol (conf/protocol/, if it has one); a name picks one; null: none
    protocol: str | None = "auto"


class MeanScore(Metric):
    """Subclasses set ``judge_cls`` (the judge they need), ``formula`` and :meth:`record` (which returns ``score``)."""

    config_cls = MeanScoreConfig  # the same settings for every such metric; auto parts come from its protocol
    judge_cls: ClassVar[type[Judge]]
    formula: ClassVar[str]
    default_prompts: ClassVar[str] = "coco_10k"
    bounds: ClassVar[tuple[float, float] | None] = None  # the range a score lies in: the interval is clipped to it
    protocol_fields: ClassVar[tuple[str, ...]] = ("prompts", "judge")  # what a protocol of this metric may set
    protocol_counting: ClassVar[tuple[str, ...]] = ("mean_of_images",)  # the value: the mean over images
    higher_is_better = True
    config: MeanScoreConfig

    @classmethod
    def resolve_config(cls, config: MeanScoreConfig, context: Any, erased: list[str] | None) -> Any:
        protocol = protocols.of_metric(cls.name, config.protocol)
        prompts = requested_prompts(config, protocol.prompts if protocol and protocol.prompts else
                                    {"name": cls.default_prompts})  # fmt: skip
        prompt_name, prompt_config = parse_part(PROMPT_SETS, prompts, f"metric '{cls.name}' prompts")
        judge = config.judge
        if judge == "auto" or isinstance(judge, dict) and judge.get("name") == "auto":
            own = protocol.judge if protocol and protocol.judge else {"name": cls.judge_cls.name}
            judge = {**own, **(judge if isinstance(judge, dict) else {}), "name": own["name"]}
        judge_name, judge_config = parse_part(JUDGES, judge, f"metric '{cls.name}' judge")
        if not issubclass(JUDGES.get(judge_name), cls.judge_cls):
            raise ConfigError(f"{cls.name} needs the {cls.judge_cls.name} judge (judge: {cls.judge_cls.name}), not "
                              f"'{judge_name}'")  # fmt: skip
        return dataclasses.replace(config, prompts=part_dict(prompt_name, prompt_config),
                                   judge=part_dict(judge_name, judge_config),
                                   protocol=protocol.name if protocol else None)  # fmt: skip

    def extra_details(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """What a subclass adds to the details."""
        return {}

    def compute(self) -> MetricResult:
        records = self.judgements.sorted()
        judge = self.judges["judge"]
        name = f"{self.name}_{self.dataset_name(self.config)}"
        details: dict[str, Any] = {
            "formula": self.formula,
            "interval": "95 % Student-t interval of the mean (n - 1 degrees of freedom)",
            "prompts": self.config.prompts,
            "judge": judge.settings(),
            "protocol": protocols.report(self.config.protocol, self.config.prompts, self.config.judge),  # type: ignore[arg-type]
        }
        if not records:
            return MetricResult(name, None, {**details, "n": 0, "error": "no images were judged"})
        summary = mean_interval([r["score"] for r in records])
        if self.bounds is not None and summary["ci95"] is not None:
            low, high = self.bounds
            summary["ci95"] = [max(summary["ci95"][0], low), min(summary["ci95"][1], high)]
            details["interval"] += f", clipped to [{low:g}, {high:g}]"
        return MetricResult(name, summary["mean"], {**summary, **details, **self.extra_details(records)})
