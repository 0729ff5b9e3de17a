"""From a composed run config (Hydra's, a seed-format YAML/JSON file, or a saved ``.hydra/config.yaml``) to a runner.

The run config has the seed page's shape: ``technique: {name, config}`` and either ``metric: {name, config}``
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
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner
from eval_learn.settings import RunConfigSchema, RunSettings


@dataclass
class NamedConfig:
    name: str
    config: dict[str, Any] | None = None


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
    technique = from_mapping(NamedConfig, cfg.technique, "technique")
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
            technique.name,
            [m.name for m in metrics],
            technique.config,
            {m.name: m.config or {} for m in metrics},
            **common,
        )
    if cfg.metric is None:
        raise ConfigError("the run config needs 'metric' (single runner) or 'metrics' (multi runner)")
    metric = from_mapping(NamedConfig, cfg.metric, "metric")
    return SingleBenchmarkRunner(technique.name, metric.name, technique.config, metric.config, **common)
