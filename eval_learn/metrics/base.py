"""The metric contract, after torchmetrics: ``update`` per batch, ``compute`` at the end, state that can be saved,
restored and merged.

A metric is assembled from named parts instead of branching on them: a *prompt set* (:mod:`eval_learn.datasets`)
that yields its prompts, and one or more *judges* (:mod:`eval_learn.judges`) that read its images. ``update``
receives a batch of images with their prompt records; the judges run on the batch (through the engine's judgement
cache when run by a runner); :meth:`Metric.record` turns each image's verdicts into the metric's own per-image
record. State is typed and mergeable (:mod:`eval_learn.metrics.state`), keyed by image index or summed, so a metric
gives the same value however its images were batched, resumed or sharded.

A metric that must see the model under test (an adversarial prompt attack) sets ``needs_model`` and receives the
technique through :meth:`Metric.attach_model`: its pipeline, with gradients through the UNet and text encoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from PIL.Image import Image

from eval_learn.configs import require
from eval_learn.datasets.base import PromptSet, build_dataset
from eval_learn.judges.base import Judge
from eval_learn.metrics import state as states
from eval_learn.registry import JUDGES, PROMPT_SETS, parse_part
from eval_learn.runtime import RunContext, resolve_device
from eval_learn.types import MetricResult, PromptDataset, PromptRecord

C = TypeVar("C", bound="MetricConfig")


@dataclass
class MetricConfig:
    """Settings every metric has."""

    limit: int | None = None  # keep N prompts, spread over the set's strata (shapes, classes, groups)
    prompts_path: str | None = None  # a local prompt file (prompts={name: csv, path: ...}; asr: see protocols)
    device: str | None = None  # where the metric's judges run (null: the run's device)
    # Inherited settings this metric refuses (its validate names what to use instead): not listed by `eval-learn list`.
    unlisted: ClassVar[tuple[str, ...]] = ()

    def measured_concept(self) -> str | None:
        """The one concept this metric measures, if any (checked against the technique's erased concepts)."""
        return None

    def validate(self) -> None:
        require(self.limit is None or self.limit > 0, f"limit must be a positive integer, got {self.limit}")
        if self.device is not None:
            resolve_device(self.device)


def resolve_auto(concept: str, context: RunContext, erased: list[str] | None) -> str:
    """``auto`` concept → the technique's erased concept, else the model's default concept."""
    if concept == "auto":
        return erased[0] if erased else context.model.default_concept
    return concept


def requested_prompts(config: MetricConfig, auto: Any) -> Any:
    """The prompt set a metric's config asks for: ``prompts_path`` (a local CSV, every row), an explicit part, or the
    metric's own ``auto`` default. Giving both a path and a part is refused."""
    prompts = getattr(config, "prompts", "auto")
    if config.prompts_path is not None:
        require(prompts == "auto", "give either prompts_path or prompts, not both")
        return {"name": "csv", "path": config.prompts_path}
    return auto if prompts == "auto" else prompts


def part_dict(name: str, config: Any) -> dict[str, Any]:
    """A part as the resolved config records it: ``{name: ..., <every setting, defaults filled in>}``."""
    return {"name": name, **dataclasses.asdict(config)}


class Metric:
    name: ClassVar[str]
    config_cls: ClassVar[type[MetricConfig]] = MetricConfig
    higher_is_better: ClassVar[bool]
    needs_model: ClassVar[bool] = False  # True: attach_model() gives it the technique under test

    def __init__(self, config: MetricConfig, context: RunContext) -> None:
        self.config = config
        self.context = context
        self.device = resolve_device(config.device) if config.device else context.device
        self.judges: dict[str, Judge] = self.build_judges()
        self.reset()

    # --- what subclasses implement -------------------------------------------------------------------------------
    @classmethod
    def resolve_config(cls, config: MetricConfig, context: RunContext, erased: list[str] | None) -> MetricConfig:
        """Fill ``auto`` values from the run (the technique's erased concept, the model's prompt set), resolve the
        parts to ``{name, settings}`` and check that the result is coherent; the report records the result."""
        return config

    def prompt_set(self) -> PromptSet:
        """The prompt set named by the resolved config's ``prompts``."""
        name, config = self.parse_prompts(self.config.prompts)  # type: ignore[attr-defined]
        return PROMPT_SETS.get(name)(config)

    def build_judges(self) -> dict[str, Judge]:
        """The judges by role (most metrics have one, ``judge``), built from the resolved config; nothing loads
        until the first image is judged."""
        spec = getattr(self.config, "judge", None)
        if spec is None:
            return {}
        name, config = self.parse_judge(spec)
        return {"judge": JUDGES.get(name)(config, self.device)}

    def samples(self) -> int | dict[str, int]:
        """Images per prompt (or per value of a row's ``group``)."""
        return 1

    def record(self, verdicts: dict[str, dict[str, Any]], record: PromptRecord) -> dict[str, Any]:
        """One image's record from its judges' verdicts (by role); kept in state and written to ``metadata.json``."""
        raise NotImplementedError

    def compute(self) -> MetricResult:
        raise NotImplementedError

    # --- resolving a config: the parts -------------------------------------------------------------------------
    @classmethod
    def parse_prompts(cls, spec: Any) -> tuple[str, Any]:
        """A prompt-set part (a name or ``{name, <settings>}``) → its name and strictly parsed settings."""
        return parse_part(PROMPT_SETS, spec, f"metric '{cls.name}' prompts")

    @classmethod
    def parse_judge(cls, spec: Any) -> tuple[str, Any]:
        """A judge part (a name or ``{name, <settings>}``) → its name and strictly parsed settings."""
        return parse_part(JUDGES, spec, f"metric '{cls.name}' judge")

    @classmethod
    def resolved(
        cls, config: C, prompts: tuple[str, Any] | None = None, judge: tuple[str, Any] | None = None, **changes: Any
    ) -> C:
        """The end of every :meth:`resolve_config`: ``config`` with its parsed parts recorded as ``{name, <every
        setting>}`` (what the report shows) and the other resolved values in ``changes``."""
        parts = {role: part_dict(*part) for role, part in (("prompts", prompts), ("judge", judge)) if part is not None}
        return dataclasses.replace(config, **parts, **changes)

    # --- shared behaviour ----------------------------------------------------------------------------------------
    @classmethod
    def dataset_name(cls, config: MetricConfig) -> str:
        name, part = parse_part(PROMPT_SETS, config.prompts, "prompts")  # type: ignore[attr-defined]
        return PROMPT_SETS.get(name)(part).dataset_name()

    @classmethod
    def preflight(cls, config: MetricConfig, context: RunContext) -> None:
        """Checks that need the run context, done at runner construction: every part's files and availability."""
        spec = getattr(config, "prompts", None)
        if spec is not None:
            name, part = cls.parse_prompts(spec)
            PROMPT_SETS.get(name).preflight(part)
        spec = getattr(config, "judge", None)
        if spec is not None:
            name, part = cls.parse_judge(spec)
            JUDGES.get(name).preflight(part)

    def load_dataset(self) -> PromptDataset:
        return build_dataset(self.prompt_set(), limit=self.config.limit, samples=self.samples(),
                             base_seed=self.context.seed)  # fmt: skip

    def attach_model(self, technique: Any) -> None:
        """Called before the first update when ``needs_model``: the technique under test (``technique.pipeline()``
        is its pipeline, UNet and text encoder included)."""
        self.technique = technique

    def judge_settings(self) -> dict[str, Any]:
        """The exact settings of the judge(s), for the report."""
        if len(self.judges) == 1:
            return next(iter(self.judges.values())).settings()
        return {role: judge.settings() for role, judge in self.judges.items()}

    def init_state(self) -> dict[str, states.State]:
        return {"judgements": states.PerImage()}

    def reset(self) -> None:
        self.states = self.init_state()

    @property
    def judgements(self) -> states.PerImage:
        return self.states["judgements"]  # type: ignore[return-value]

    def judged_by(self, record: PromptRecord) -> Iterable[str]:
        """The judges (by role) that judge this record's image: all of them, unless a metric gives each part of its
        prompts its own judge (``err``'s arms). Decided per record, never by position in a batch."""
        return self.judges.keys()

    def update(self, images: list[Image], records: list[PromptRecord]) -> list[dict[str, Any]]:
        """Judge a batch and record each image; returns the per-image records (for ``metadata.json``)."""
        if len(images) != len(records):
            raise ValueError(f"{len(images)} images for {len(records)} prompts")
        repeated = [r.index for r in records if r.index in self.judgements.items]
        if repeated:
            raise ValueError(f"images {repeated[:5]} were judged twice")
        by_role: dict[str, dict[int, dict[str, Any]]] = {}
        for role, judge in self.judges.items():
            mine = [i for i, r in enumerate(records) if role in self.judged_by(r)]
            if mine:
                by_role[role] = dict(zip(mine, judge.judge([images[i] for i in mine]), strict=True))
        out = []
        for i, record in enumerate(records):
            entry = self.record({role: verdicts[i] for role, verdicts in by_role.items() if i in verdicts}, record)
            # The prompt an image was drawn for (its first sample's index): the cluster of clustered intervals.
            entry["prompt_id"] = record.index - record.extra.get("sample", 0)
            self.judgements.add(record.index, entry)
            out.append(entry)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The JSON view of the state (the report's ``metric_state``)."""
        return states.state_json(self.states)

    def save_state(self, folder: Path) -> None:
        states.save(self.states, Path(folder), {"metric": self.name, "config": dataclasses.asdict(self.config)})

    def load_state(self, folder: Path) -> dict[str, Any]:
        """Restore a saved state (verified: :class:`eval_learn.metrics.state.DamagedState` names what is wrong);
        returns what was saved with it (``metric``, ``config``)."""
        return states.load(self.states, Path(folder))

    def merge(self, other: Metric) -> None:
        """Add another shard's state (the same metric over disjoint images)."""
        for name, state in self.states.items():
            state.merge(other.states[name])  # type: ignore[arg-type]
