"""From a composed run config (Hydra's, a seed-format YAML/JSON file, or a saved ``.hydra/config.yaml``) to a runner.

The run config has the seed page's shape: ``technique: {name, config}`` and either ``metric: {name, config}``
(single runner) or ``metrics`` (multi runner: a list of ``{name, config}``, or a mapping of them as the ``metrics``
config group composes it), plus ``output_dir``, ``model``, ``seed``, ``batch_size``, ``device``, ``dtype`` and
``cache_dir``. Anything else is a typo and fails here, before any model loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eval_learn.configs import ConfigError, from_mapping
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner
from eval_learn.runners.single import DEFAULT_MODEL


@dataclass
class NamedConfig:
    name: str
    config: dict[str, Any] | None = None


@dataclass
class RunConfig:
    technique: dict[str, Any]
    metric: dict[str, Any] | None = None
    metrics: Any = None
    model: Any = DEFAULT_MODEL
    seed: int = 0
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    output_dir: str = "results"
    cache_dir: str | None = None
    batch_invariant: bool = True
    num_threads: int | None = None  # torch CPU threads for this process (None: torch's default)


def _metric_list(metrics: Any) -> list[NamedConfig]:
    if isinstance(metrics, Mapping):
        metrics = list(metrics.values())
    if not isinstance(metrics, list) or not metrics:
        raise ConfigError("'metrics' must be a non-empty list of {name, config} entries")
    return [from_mapping(NamedConfig, m, f"metrics[{i}]") for i, m in enumerate(metrics)]


def build_runner(data: Mapping[str, Any]) -> SingleBenchmarkRunner | MultiBenchmarkRunner:
    cfg = from_mapping(RunConfig, data, "run config")
    if cfg.num_threads is not None:
        if cfg.num_threads < 1:
            raise ConfigError(f"num_threads must be a positive integer, got {cfg.num_threads}")
        import torch

        torch.set_num_threads(cfg.num_threads)
    technique = from_mapping(NamedConfig, cfg.technique, "technique")
    common: dict[str, Any] = {
        "output_dir": cfg.output_dir,
        "seed": cfg.seed,
        "model": cfg.model,
        "batch_size": cfg.batch_size,
        "device": cfg.device,
        "dtype": cfg.dtype,
        "cache_dir": cfg.cache_dir,
        "batch_invariant": cfg.batch_invariant,
    }
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
