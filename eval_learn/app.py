"""From a composed run config (Hydra's, a seed-format YAML/JSON file, or a saved ``.hydra/config.yaml``) to a runner.

The run config has the seed page's shape: ``technique: {name, config}`` (and the recipe's ``recipe``,
``follows``, ``differs``: eval_learn.recipes) and either ``metric: {name, config}``
(single runner) or ``metrics`` (multi runner: a list of ``{name, config}``, or a mapping of them as the ``metrics``
config group composes it), plus ``output_dir``, ``model`` and the run settings of
:class:`eval_learn.settings.RunSettings`. Anything else is a typo and fails here, before any model loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eval_learn.configs import ConfigError, from_mapping
from eval_learn.recipes import RECIPE_KEYS, read_info
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner
from eval_learn.settings import RunConfigSchema, RunSettings


@dataclass
class NamedConfig:
    name: str
    config: dict[str, Any] | None = None


@dataclass
class TechniqueEntry(NamedConfig):
    """The run config's technique: its config plus the recipe it is (eval_learn.recipes)."""

    recipe: str | None = None
    follows: Any = None
    differs: Any = None

    def validate(self) -> None:
        read_info({k: getattr(self, k) for k in RECIPE_KEYS if getattr(self, k) is not None}, "technique")

    def option(self) -> str:
        """The technique as the runners take it: ``name`` or ``name/recipe``."""
        return f"{self.name}/{self.recipe}" if self.recipe else self.name


def _metric_list(metrics: Any) -> list[NamedConfig]:
    if isinstance(metrics, Mapping):
        metrics = list(metrics.values())
    if not isinstance(metrics, list) or not metrics:
        raise ConfigError("'metrics' must be a non-empty list of {name, config} entries")
    return [from_mapping(NamedConfig, m, f"metrics[{i}]") for i, m in enumerate(metrics)]


def build_runner(data: Mapping[str, Any]) -> SingleBenchmarkRunner | MultiBenchmarkRunner:
    cfg = from_mapping(RunConfigSchema, data, "run config")
    if cfg.technique is None:
        raise ConfigError("the run config needs 'technique: {name, config}'")
    technique = from_mapping(TechniqueEntry, cfg.technique, "technique")
    settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(RunSettings) if f.name != "seed"}
    common: dict[str, Any] = {"output_dir": cfg.output_dir, "seed": cfg.seed, "model": cfg.model, **settings}
    if cfg.metric is not None and cfg.metrics is not None:
        raise ConfigError(
            "the run config has both 'metric' (single runner) and 'metrics' (multi runner); keep one "
            "(on the command line, metric=X alone selects the single runner)"
        )
    if cfg.metrics is not None:
        metrics = _metric_list(cfg.metrics)
        return MultiBenchmarkRunner(
            technique.option(),
            [m.name for m in metrics],
            technique.config,
            {m.name: m.config or {} for m in metrics},
            **common,
        )
    if cfg.metric is None:
        raise ConfigError("the run config needs 'metric' (single runner) or 'metrics' (multi runner)")
    metric = from_mapping(NamedConfig, cfg.metric, "metric")
    return SingleBenchmarkRunner(technique.option(), metric.name, technique.config, metric.config, **common)
