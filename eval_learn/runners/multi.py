"""One technique against several metrics: the technique is prepared once, each metric loads its own prompts."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eval_learn.artifacts import make_run_id, write_json
from eval_learn.configs import ConfigError
from eval_learn.runners.base import BaseRunner
from eval_learn.runners.single import DEFAULT_MODEL

log = logging.getLogger(__name__)


class MultiBenchmarkRunner(BaseRunner):
    """Writes ``<run_id>/<metric>/{report.json, images/, metadata.json}`` per metric, as soon as each finishes (a
    later failure keeps them), and the combined ``<run_id>/multi/report.json``."""

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
        batch_size: int = 4,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: str | Path | None = None,
        batch_invariant: bool = True,
    ) -> None:
        super().__init__(
            technique_name,
            technique_config,
            output_dir,
            seed,
            model,
            batch_size,
            device,
            dtype,
            cache_dir,
            batch_invariant,
        )
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
        started = time.perf_counter()
        timestamp = time.time()
        technique_config = asdict(self.technique_config)
        configs = {m.name: m.config_dict() for m in self.metrics}
        run_id = make_run_id(
            self.technique_name,
            technique_config,
            sorted(configs),
            configs,
            sorted(m.dataset_name for m in self.metrics),
            timestamp,
        )
        root = self.output_dir / run_id
        log.info("Run %s → %s", run_id, root)
        self._check_model()
        prepared = [(spec, *self._setup_metric(spec)) for spec in self.metrics]
        technique = self.build_technique()
        results: dict[str, Any] = {}
        try:
            for spec, metric, dataset in prepared:
                result, entries = self._evaluate(spec, technique, metric, dataset, root / spec.name)
                report = self._metric_report(
                    run_id, timestamp, spec, technique, metric, dataset, result, self._timings_for(spec.name)
                )
                self._write_metric_files(root / spec.name, report, entries)
                results[spec.name] = report
                log.info("%s = %s", result.name, result.value)
            self._timed("total_s", started)
            combined = {
                "run_id": run_id,
                "timestamp": timestamp,
                "technique_name": self.technique_name,
                "technique_config": technique_config,
                "metric_names": [m.name for m in self.metrics],
                "metric_configs": configs,
                "datasets": {name: r["dataset_name"] for name, r in results.items()},
                "dataset_metadata": {name: r["dataset_metadata"] for name, r in results.items()},
                "metric_results": {name: r["metric_result"] for name, r in results.items()},
                "judges": {name: r["judge"] for name, r in results.items()},
                **self._common_report(technique),
                "metric_timings": {name: self._timings_for(name) for name in results},
            }
            write_json(root / "multi" / "report.json", combined)
        finally:
            technique.close()
        return combined
