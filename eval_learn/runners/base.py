"""What both runners share: validation at construction, before any model loads; the run itself is the engine's."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eval_learn import TORCH_LOADED_FIRST
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.metrics.base import Metric
from eval_learn.models import ensure_available, resolve_model, technique_preset
from eval_learn.registry import METRICS, TECHNIQUES, check_compatible
from eval_learn.runtime import RunContext, resolve_device, resolve_dtype
from eval_learn.settings import RunSettings, check_writable
from eval_learn.summary import summary_lines
from eval_learn.techniques.base import Technique

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sd14"


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


class BaseRunner:
    layout: str

    def __init__(
        self,
        technique_name: str,
        technique_config: Mapping[str, Any] | None,
        output_dir: str | Path,
        seed: int,
        model: str | Mapping[str, Any],
        settings: Mapping[str, Any],
    ) -> None:
        self.settings = from_mapping(RunSettings, {**settings, "seed": seed}, "run settings")
        if output_dir is None or not str(output_dir).strip():
            raise ConfigError("output_dir must name a folder (it is empty)")
        check_writable(Path(output_dir), "output_dir")
        self.technique_name = TECHNIQUES.canonical(technique_name)
        self.technique_cls: type[Technique] = TECHNIQUES.get(self.technique_name)
        model_spec = resolve_model(dict(model) if isinstance(model, Mapping) else model)
        self.technique_config = from_mapping(
            self.technique_cls.config_cls,
            {**technique_preset(model_spec, self.technique_name), **(technique_config or {})},
            f"technique '{technique_name}' config",
        )
        device = resolve_device(self.settings.device)
        self.context = RunContext(
            model=model_spec,
            device=device,
            dtype=resolve_dtype(self.settings.dtype, device),
            seed=self.settings.seed,
            cache_dir=self.settings.resolved_cache_dir(),
            settings=self.settings,
        )
        self.output_dir = Path(output_dir)
        self.seed = self.settings.seed
        self.batch_size = self.settings.batch_size
        self.metrics: list[MetricSpec] = []

    def _metric_spec(self, name: str, config: Mapping[str, Any] | None) -> MetricSpec:
        spec = MetricSpec(name, config, self.context, self.technique_config.erased_concepts())
        check_compatible(self.technique_name, self.technique_config, spec.name, spec.config)
        return spec

    def check_model(self) -> None:
        ensure_available(self.context.model)

    def _execute(self, run_id: str, timestamp: float) -> dict[str, Any]:
        import torch

        from eval_learn.engine.run import Engine

        if self.settings.num_threads is not None:
            torch.set_num_threads(self.settings.num_threads)
        elif TORCH_LOADED_FIRST and torch.get_num_threads() > 1:
            log.warning("torch was imported before eval_learn, so its idle threads spin (OMP_WAIT_POLICY unset): on a "
                        "machine doing other work set num_threads=1, or import eval_learn first")  # fmt: skip
        report = Engine(self, self.layout).run(run_id, timestamp)
        _say_where(report, self.output_dir / run_id)
        return report


def _say_where(report: dict[str, Any], folder: Path) -> None:
    """The values and where the report went, as the command line ends (so a Python API user learns it too). Without
    any logging set up by the program, eval_learn's own messages go to stderr, as a command line's would."""
    package = logging.getLogger("eval_learn")
    if not package.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("eval-learn: %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
    for line in summary_lines(report, folder):
        log.info(line)
