"""One technique against several metrics: the technique is prepared once, each metric loads its own prompts, and
an image two metrics ask for is generated once."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eval_learn.configs import ConfigError
from eval_learn.run_id import make_run_id
from eval_learn.runners.base import DEFAULT_MODEL, BaseRunner


class MultiBenchmarkRunner(BaseRunner):
    """Writes ``<run_id>/<metric>/{report.json, images/, metadata.json}`` per metric and the combined
    ``<run_id>/multi/report.json``. A metric that fails is recorded there; the others' results are still written
    (and ``run()`` then raises :class:`eval_learn.engine.run.MetricsFailed`)."""

    layout = "multi"

    def __init__(
        self,
        technique_name: str,
        metric_names: Sequence[str],
        technique_config: Mapping[str, Any] | None = None,
        metric_configs: Mapping[str, Mapping[str, Any]] | None = None,
        output_dir: str | Path = "results",
        seed: int = 0,
        *,
        model: str | Mapping[str, Any] = DEFAULT_MODEL,
        **settings: Any,
    ) -> None:
        super().__init__(technique_name, technique_config, output_dir, seed, model, settings)
        if isinstance(metric_names, str) or not metric_names:
            raise ConfigError("metric_names must be a non-empty list of metric names")
        metric_configs = dict(metric_configs or {})
        stray = sorted(set(metric_configs) - set(metric_names))
        if stray:
            raise ConfigError(f"metric_configs has entries for metrics that are not run: {stray}")
        self.metrics = [self._metric_spec(name, metric_configs.get(name)) for name in metric_names]
        canonical = [m.name for m in self.metrics]
        duplicates = sorted({n for n in canonical if canonical.count(n) > 1})
        if duplicates:
            raise ConfigError(f"duplicate metric names: {duplicates} (each metric writes its own folder)")

    def run(self) -> dict[str, Any]:
        timestamp = time.time()
        configs = {m.name: m.config_dict() for m in self.metrics}
        run_id = make_run_id(
            self.technique_name, asdict(self.technique_config), sorted(configs), configs,
            sorted(m.dataset_name for m in self.metrics), timestamp,
        )  # fmt: skip
        return self._execute(run_id, timestamp)
