"""What a run is, as the engine receives it: the technique and the metrics, resolved and checked, and where to write.

The runners build a :class:`RunSpec` from their arguments (validation happens there, before any model loads); the
engine runs it. The engine never sees a runner, so imports point one way: runners → engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eval_learn.configs import ConfigError, from_mapping
from eval_learn.metrics.base import Metric
from eval_learn.registry import METRICS
from eval_learn.runtime import RunContext
from eval_learn.techniques.base import Technique, TechniqueConfig


class MetricSpec:
    """A metric name resolved to its class and strictly parsed, resolved config (parts included)."""

    def __init__(
        self, name: str, config: Mapping[str, Any] | None, context: RunContext, erased: list[str] | None
    ) -> None:
        self.name = METRICS.canonical(name)
        self.cls: type[Metric] = METRICS.get(self.name)
        parsed = from_mapping(self.cls.config_cls, config, f"metric '{name}' config")
        try:
            self.config = self.cls.resolve_config(parsed, context, erased)
            self.cls.preflight(self.config, context)
            self.dataset_name = self.cls.dataset_name(self.config)
        except ConfigError as err:
            raise ConfigError(f"metric '{name}' config: {err}") from None

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)


@dataclass
class RunSpec:
    """One technique against ``metrics``, in ``context``, written under ``output_dir``."""

    technique_name: str
    technique_cls: type[Technique]
    technique_config: TechniqueConfig
    context: RunContext
    output_dir: Path
    metrics: list[MetricSpec] = field(default_factory=list)
    recipe: dict[str, Any] | None = None  # the technique's recipe, what it follows and how it differs
