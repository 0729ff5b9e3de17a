"""One technique against one metric (the seed page's ``SingleBenchmarkRunner``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eval_learn.run_id import make_run_id
from eval_learn.runners.base import DEFAULT_MODEL, BaseRunner


class SingleBenchmarkRunner(BaseRunner):
    """Validate at construction; ``run()`` evaluates and returns the report it writes to
    ``<output_dir>/<run_id>/report.json`` (with ``images/`` and ``metadata.json`` beside it).

    Unknown names, unknown or ill-typed config keys and incompatible pairs raise ``ValueError`` here, before any
    model is loaded. Keyword-only run settings (``batch_size``, ``device``, ``dtype``, ``cache_dir``,
    ``batch_invariant``, ``image_cache``, ...) are those of :class:`eval_learn.settings.RunSettings`.
    """

    layout = "single"

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
        **settings: Any,
    ) -> None:
        super().__init__(technique_name, technique_config, output_dir, seed, model, settings)
        self.metric = self._metric_spec(metric_name, metric_config)
        self.metrics = [self.metric]

    def run(self) -> dict[str, Any]:
        timestamp = time.time()
        run_id = make_run_id(
            self.technique_name, asdict(self.technique_config), self.metric.name, self.metric.config_dict(),
            self.metric.dataset_name, timestamp,
        )  # fmt: skip
        return self._execute(run_id, timestamp)
