"""A run's reports, built from its evaluations once every value is computed, and written next to its images.

``single`` layout: the metric's ``report.json`` and ``metadata.json`` in the run folder. ``multi``: one folder per
metric plus ``multi/report.json``, which combines them. A metric that failed leaves its ``error.json`` instead.
Every report is sealed (a digest over its content) and verified when read back.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval_learn.engine.evaluation import Evaluation
from eval_learn.engine.judging import CachedJudge
from eval_learn.engine.sampling import GenerationMode
from eval_learn.engine.spec import RunSpec
from eval_learn.runtime import environment, peak_memory
from eval_learn.storage import as_written, sealed, write_json

if TYPE_CHECKING:
    from eval_learn.techniques.base import Technique

log = logging.getLogger(__name__)


class ReportBuilder:
    """What one run wrote, from its spec, the technique that made the images and the engine's timings and counts
    (``rendered`` of the ``planned`` distinct images were made by this run)."""

    def __init__(
        self, spec: RunSpec, layout: str, technique: Technique, mode: GenerationMode, timings: dict[str, float],
        rendered: int, planned: int,
    ) -> None:  # fmt: skip
        self.spec = spec
        self.layout = layout
        self.technique = technique
        self.mode = mode
        self.timings = timings
        self.rendered = rendered
        self.planned = planned

    def metric_timings(self, evaluation: Evaluation) -> dict[str, float]:
        """One metric's seconds: the shared technique preparation plus its own phases (its share of generation
        counts the images it used that this run rendered)."""
        own = {k: round(v, 4) for k, v in evaluation.timings.items()}
        shared = {"technique_prepare_s": self.timings.get("technique_prepare_s", 0.0)}
        parts = ("technique_prepare_s", "dataset_load_s", "metric_setup_s", "evaluate_s")
        total = sum((shared | own).get(k, 0.0) for k in parts)
        return shared | own | {"total_s": round(total, 4)}

    def cache_stats(self, evaluation: Evaluation) -> dict[str, int]:
        reused = sum(j.reused_verdicts() for j in evaluation.metric.judges.values() if isinstance(j, CachedJudge))
        return {**evaluation.counts, "judgements_reused": reused}

    def common_report(self, timings: dict[str, float]) -> dict[str, Any]:
        technique, mode = self.technique, self.mode
        context = self.spec.context
        settings = context.settings
        return {
            "model": asdict(context.model),
            "seed": context.seed,
            "batch_size": settings.batch_size,
            "device": technique.device,
            "dtype": str(context.dtype).removeprefix("torch."),
            "generation": {
                **technique.generation_settings(),
                **mode.describe(),
                "batch_invariant": mode.name != "batched",
                "sampling": technique.sampling_settings(),
            },  # fmt: skip
            "run_settings": asdict(settings),
            **({"shard": asdict(settings.shard)} if settings.shard.count > 1 else {}),
            "technique_info": technique.info,
            "images_origin": technique.images_origin(),
            "technique_recipe": self.spec.recipe,
            "timings": timings,
            "peak_memory": peak_memory(technique.device),
            "environment": environment(),
        }

    def metric_report(self, run_id: str, timestamp: float, evaluation: Evaluation) -> dict[str, Any]:
        """The seed page's report schema plus what a reader needs to trust the number."""
        run, spec, metric = self.spec, evaluation.spec, evaluation.metric
        assert evaluation.result is not None
        return {
            "run_id": run_id,
            "timestamp": timestamp,
            "technique_name": run.technique_name,
            "metric_name": spec.name,
            "dataset_name": evaluation.dataset.name,
            "dataset_metadata": evaluation.dataset.metadata,
            "technique_config": asdict(run.technique_config),
            "metric_config": spec.config_dict(),
            "metric_result": {**evaluation.result.to_dict(), "higher_is_better": metric.higher_is_better},
            "judge": metric.judge_settings(),
            "metric_state": metric.state_dict(),
            "cache_stats": self.cache_stats(evaluation),
            **self.common_report(self.metric_timings(evaluation) if self.layout == "multi" else
                                 dict(self.timings)),
        }  # fmt: skip

    def write(self, run_id: str, timestamp: float, evaluations: list[Evaluation], root: Path) -> dict[str, Any]:
        """Write every metric's report (or error) and, in a multi run, the combined one; returns the report as
        written (the single metric's, or the combined one)."""
        reports: dict[str, dict[str, Any]] = {}
        for evaluation in evaluations:
            folder = evaluation.folder
            if evaluation.error is not None:
                write_json(folder / "error.json", {"run_id": run_id, "metric_name": evaluation.name,
                                                   **evaluation.error})  # fmt: skip
                continue
            report = sealed(self.metric_report(run_id, timestamp, evaluation))  # verified when read back
            entries = sorted(evaluation.entries, key=lambda e: e["index"])
            write_json(folder / "metadata.json", sealed({"run_id": run_id, "images": entries}))
            write_json(folder / "report.json", report)
            reports[evaluation.name] = report
            log.debug("%s = %s", report["metric_result"]["name"], report["metric_result"]["value"])
        if self.layout == "single":
            return as_written(reports[evaluations[0].name])
        run = self.spec
        combined = {
            "run_id": run_id,
            "timestamp": timestamp,
            "technique_name": run.technique_name,
            "technique_config": asdict(run.technique_config),
            "metric_names": [e.name for e in evaluations],
            "metric_configs": {e.name: e.spec.config_dict() for e in evaluations},
            "datasets": {n: r["dataset_name"] for n, r in reports.items()},
            "dataset_metadata": {n: r["dataset_metadata"] for n, r in reports.items()},
            "metric_results": {n: r["metric_result"] for n, r in reports.items()},
            "judges": {n: r["judge"] for n, r in reports.items()},
            "failed_metrics": {e.name: e.error for e in evaluations if e.error},
            "cache_stats": self.run_cache_stats(evaluations),
            **self.common_report(dict(self.timings)),
            "metric_timings": {e.name: self.metric_timings(e) for e in evaluations},
        }
        combined = sealed(combined)  # verified when read back
        write_json(root / "multi" / "report.json", combined)
        return as_written(combined)

    def run_cache_stats(self, evaluations: list[Evaluation]) -> dict[str, int]:
        """The run's distinct images: rendered now or found in the store; verdicts reused over all metrics."""
        return {
            "images_generated": self.rendered,
            "images_reused": self.planned - self.rendered,
            "judgements_reused": sum(self.cache_stats(e)["judgements_reused"] for e in evaluations),
            "images_requested": sum(len(e.dataset.records) for e in evaluations),
        }
