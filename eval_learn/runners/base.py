"""What both runners share: validation at construction, before any model loads; the run itself is the engine's."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eval_learn import TORCH_LOADED_FIRST, compose
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.engine.headline import summary_lines
from eval_learn.engine.run import Engine
from eval_learn.engine.spec import MetricSpec, RunSpec
from eval_learn.recipes import recipe_of, split_option
from eval_learn.registry import TECHNIQUES, check_compatible
from eval_learn.runtime import RunContext, resolve_device, resolve_dtype
from eval_learn.settings import RunSettings, check_writable
from eval_learn.techniques.base import Technique

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sd14"


class BaseRunner:
    """Parse and check a run's arguments at construction; the engine runs the resulting :class:`RunSpec`."""

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
        name, recipe = split_option(technique_name)
        self.technique_name = TECHNIQUES.canonical(name)
        self.technique_cls: type[Technique] = TECHNIQUES.get(self.technique_name)
        # The model, technique recipe and per-model preset as the command line composes them (eval_learn.compose):
        # "esd/esd_sd" on model=tiny is that recipe under conf/preset/tiny_esd.yaml; the caller's config wins.
        spec, preset_key = compose.model_spec(model)
        option = f"{self.technique_name}/{recipe}" if recipe else self.technique_name
        composed = compose.technique_config(option, preset_key)
        self.recipe = recipe_of(option, composed)
        self.technique_config = from_mapping(
            self.technique_cls.config_cls,
            {**(composed or {}).get("config", {}), **(technique_config or {})},
            f"technique '{technique_name}' config",
        )
        device = resolve_device(self.settings.device)
        self.context = RunContext(
            model=spec,
            device=device,
            dtype=resolve_dtype(self.settings.dtype, device),
            seed=self.settings.seed,
            cache_dir=self.settings.resolved_cache_dir(),
            settings=self.settings,
        )
        self.output_dir = Path(output_dir)
        self.metrics: list[MetricSpec] = []

    def _metric_spec(self, name: str, config: Mapping[str, Any] | None) -> MetricSpec:
        spec = MetricSpec(name, config, self.context, self.technique_config.erased_concepts())
        check_compatible(self.technique_name, self.technique_config, spec.name, spec.config)
        return spec

    def run_spec(self) -> RunSpec:
        """What the engine runs: the resolved technique and metrics, the context and the output folder."""
        return RunSpec(self.technique_name, self.technique_cls, self.technique_config, self.context, self.output_dir,
                       self.metrics, self.recipe.record() if self.recipe is not None else None)  # fmt: skip

    def _execute(self, run_id: str, timestamp: float) -> dict[str, Any]:
        import torch

        threads = self.settings.num_threads
        if threads is None and self.context.device == "cpu":
            threads = self.context.model.cpu_threads  # a small model's own choice (see ModelSpec.cpu_threads)
        if threads is not None:
            torch.set_num_threads(threads)
        elif TORCH_LOADED_FIRST and torch.get_num_threads() > 1:
            log.warning("torch was imported before eval_learn, so its idle threads spin (OMP_WAIT_POLICY unset): on a "
                        "machine doing other work set num_threads=1, or import eval_learn first")  # fmt: skip
        report = Engine(self.run_spec(), self.layout).run(run_id, timestamp)
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
