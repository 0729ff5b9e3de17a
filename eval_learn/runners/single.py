"""One technique against one metric (the seed page's ``SingleBenchmarkRunner``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eval_learn.artifacts import make_run_id
from eval_learn.runners.base import BaseRunner

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sd14"


class SingleBenchmarkRunner(BaseRunner):
    """Validate at construction; ``run()`` evaluates and returns the report it writes to
    ``<output_dir>/<run_id>/report.json`` (with ``images/`` and ``metadata.json`` beside it).

    Unknown names, unknown or ill-typed config keys and incompatible pairs raise ``ValueError`` here, before any
    model is loaded.
    """

    def __init__(
        self,
        technique_name: str,
        metric_name: str,
        technique_config: Mapping[str, Any] | None = None,
        metric_config: Mapping[str, Any] | None = None,
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
        self.metric = self._metric_spec(metric_name, metric_config)

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        timestamp = time.time()
        technique_config, metric_config = asdict(self.technique_config), self.metric.config_dict()
        run_id = make_run_id(
            self.technique_name, technique_config, self.metric.name, metric_config, self.metric.dataset_name, timestamp
        )
        folder = self.output_dir / run_id
        log.info("Run %s → %s", run_id, folder)
        self._check_model()
        metric, dataset = self._setup_metric(self.metric)
        technique = self.build_technique()
        try:
            result, entries = self._evaluate(self.metric, technique, metric, dataset, folder)
            self._timed("total_s", started)
            report = self._metric_report(run_id, timestamp, self.metric, technique, metric, dataset, result)
            self._write_metric_files(folder, report, entries)
        finally:
            technique.close()
        log.info("%s = %s (%s)", result.name, result.value, folder / "report.json")
        return report
