"""What both runners share: validation at construction, and the generate → update loop of one metric."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eval_learn.artifacts import write_json
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.metrics.base import Metric
from eval_learn.models import ensure_available, resolve_model, technique_preset
from eval_learn.registry import METRICS, TECHNIQUES, check_compatible
from eval_learn.runtime import RunContext, default_cache_dir, environment, peak_memory, resolve_device, resolve_dtype
from eval_learn.techniques.base import Technique
from eval_learn.types import MetricResult

log = logging.getLogger(__name__)


class MetricSpec:
    """A metric name resolved to its class and strictly parsed config."""

    def __init__(
        self, name: str, config: Mapping[str, Any] | None, context: RunContext, erased: list[str] | None
    ) -> None:
        self.name = METRICS.canonical(name)
        self.cls: type[Metric] = METRICS.get(self.name)
        parsed = from_mapping(self.cls.config_cls, config, f"metric '{name}' config")
        try:
            self.config = self.cls.resolve_config(parsed, context, erased)
        except ConfigError as err:
            raise ConfigError(f"metric '{name}' config: {err}") from None
        self.dataset_name = self.cls.dataset_name(self.config, context.model)
        self.cls.preflight(self.config, context)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)


class BaseRunner:
    def __init__(
        self,
        technique_name: str,
        technique_config: Mapping[str, Any] | None,
        output_dir: str | Path,
        seed: int,
        model: str | Mapping[str, Any],
        batch_size: int,
        device: str,
        dtype: str,
        cache_dir: str | Path | None,
        batch_invariant: bool = True,
    ) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.technique_name = TECHNIQUES.canonical(technique_name)
        self.technique_cls: type[Technique] = TECHNIQUES.get(self.technique_name)
        model_spec = resolve_model(dict(model) if isinstance(model, Mapping) else model)
        self.technique_config = from_mapping(
            self.technique_cls.config_cls,
            {**technique_preset(model_spec, self.technique_name), **(technique_config or {})},
            f"technique '{technique_name}' config",
        )
        resolved_device = resolve_device(device)
        self.context = RunContext(
            model=model_spec,
            device=resolved_device,
            dtype=resolve_dtype(dtype, resolved_device),
            seed=seed,
            cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
            batch_invariant=bool(batch_invariant),
        )
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.batch_size = batch_size
        self.timings: dict[str, float] = {}  # the whole run's phases
        self.metric_timings: dict[str, dict[str, float]] = {}  # the phases spent on each metric alone

    def _metric_spec(self, name: str, config: Mapping[str, Any] | None) -> MetricSpec:
        spec = MetricSpec(name, config, self.context, self.technique_config.erased_concepts())
        check_compatible(self.technique_name, self.technique_config, spec.name, spec.config)
        return spec

    def _timed(self, key: str, start: float, metric: str | None = None) -> None:
        elapsed = time.perf_counter() - start
        for timings in (self.timings, self.metric_timings.setdefault(metric, {})) if metric else (self.timings,):
            timings[key] = round(timings.get(key, 0.0) + elapsed, 4)

    def _timings_for(self, metric: str) -> dict[str, float]:
        """One metric's seconds in a multi run: the shared technique preparation plus its own phases; its total
        counts those and its evaluation's wall time (generation, judging, writing images), not the other metrics'."""
        shared = {k: v for k, v in self.timings.items() if k == "technique_prepare_s"}
        own = self.metric_timings.get(metric, {})
        parts = ("technique_prepare_s", "dataset_load_s", "metric_setup_s", "evaluate_s")
        total = sum((shared | own).get(k, 0.0) for k in parts)
        return shared | own | {"total_s": round(total, 4)}

    def build_technique(self) -> Technique:
        start = time.perf_counter()
        log.info("Instantiating technique <%s>", self.technique_name)
        technique = self.technique_cls(self.technique_config, self.context)
        technique.prepare()
        self._timed("technique_prepare_s", start)
        return technique

    def _setup_metric(self, spec: MetricSpec) -> tuple[Metric, Any]:
        start = time.perf_counter()
        log.info("Instantiating metric <%s>", spec.name)
        metric = spec.cls(spec.config, self.context)
        dataset = metric.load_dataset()  # prompts first: a download failure must not wait for the judge to load
        self._timed("dataset_load_s", start, spec.name)
        start = time.perf_counter()
        metric.setup()
        self._timed("metric_setup_s", start, spec.name)
        log.info("Metric <%s>: %d prompts from %s", spec.name, len(dataset), dataset.metadata.get("source"))
        return metric, dataset

    def _evaluate(
        self, spec: MetricSpec, technique: Technique, metric: Metric, dataset: Any, folder: Path
    ) -> tuple[MetricResult, list]:
        """Generate batch by batch, judge, write each image at once; no image outlives its batch."""
        evaluation_start = time.perf_counter()
        images_dir = folder / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        entries: list[dict[str, Any]] = []
        settings = technique.generation_settings()
        for batch in tqdm(dataset.batches(self.batch_size), desc=f"{technique.name} × {metric.name}", unit="batch"):
            start = time.perf_counter()
            images = technique.generate(batch)
            self._timed("generation_s", start, spec.name)
            start = time.perf_counter()
            judgements = metric.update(images, batch)
            self._timed("metric_update_s", start, spec.name)
            for image, record, judgement in zip(images, batch, judgements, strict=True):
                file = f"images/{record.index:05d}.png"
                image.save(folder / file)
                guidance = record.guidance_scale if record.guidance_scale is not None else settings["guidance_scale"]
                entries.append(
                    {
                        "file": file,
                        "index": record.index,
                        "prompt": record.prompt,
                        "seed": record.seed,
                        "guidance_scale": guidance,
                        "categories": list(record.categories),
                        "source": record.extra,
                        "judgement": judgement,
                    }
                )
        start = time.perf_counter()
        result = metric.compute()
        self._timed("metric_compute_s", start, spec.name)
        self._timed("evaluate_s", evaluation_start, spec.name)
        return result, entries

    def _check_model(self) -> None:
        ensure_available(self.context.model)

    def _common_report(self, technique: Technique | None, timings: dict[str, float] | None = None) -> dict[str, Any]:
        settings = technique.generation_settings() if technique is not None else {}
        return {
            "model": asdict(self.context.model),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "device": self.context.device,
            "dtype": str(self.context.dtype).removeprefix("torch."),
            "generation": settings,
            "technique_info": technique.info if technique is not None else {},
            "timings": dict(self.timings) if timings is None else timings,
            "peak_memory": peak_memory(self.context.device),
            "environment": environment(),
        }

    def _metric_report(
        self,
        run_id: str,
        timestamp: float,
        spec: MetricSpec,
        technique: Technique,
        metric: Metric,
        dataset: Any,
        result: MetricResult,
        timings: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """The seed page's report schema plus what a reader needs to trust the number."""
        return {
            "run_id": run_id,
            "timestamp": timestamp,
            "technique_name": self.technique_name,
            "metric_name": spec.name,
            "dataset_name": dataset.name,
            "dataset_metadata": dataset.metadata,
            "technique_config": asdict(self.technique_config),
            "metric_config": spec.config_dict(),
            "metric_result": result.to_dict(),
            "judge": metric.judge_settings(),
            "metric_state": metric.state_dict(),
            **self._common_report(technique, timings),
        }

    @staticmethod
    def _write_metric_files(folder: Path, report: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        write_json(folder / "metadata.json", {"run_id": report["run_id"], "images": entries})
        write_json(folder / "report.json", report)
