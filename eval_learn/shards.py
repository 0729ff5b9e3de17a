"""Combine the jobs of a split run into the value the unsplit run gives: ``eval-learn merge DIR [DIR ...]``.

A run split with ``shard.count=N`` (a sweep over ``shard.index=0,...,N-1``, e.g. one SLURM job each) makes and
judges image i of each metric's set in job i mod N, with the same seeds, file names and judges as the whole run.
Every job saves its metrics' states (``state/``: per-image records and sums). Merging loads them into one metric per
(technique config, metric config, model, seed), checks that every shard is there exactly once (of two runs of the
same shard the newest counts), and computes the value: the same number, to the last digit, as the unsplit run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from eval_learn.compose import resolve_model
from eval_learn.engine.spec import MetricSpec
from eval_learn.errors import ConfigError
from eval_learn.metrics.state import DamagedState, PerImage
from eval_learn.run_id import make_run_id
from eval_learn.runtime import RunContext
from eval_learn.settings import RunSettings
from eval_learn.storage import as_written, canonical_json, seal_problem, sealed, write_json

log = logging.getLogger(__name__)


def shard_reports(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every per-metric report of a shard job under ``paths`` (single runs' and multi runs' metric folders)."""
    found = []
    for root in paths:
        if not root.exists():
            raise ConfigError(f"'{root}' does not exist")
        candidates = [root] if root.is_file() else sorted(root.rglob("report.json"))
        for path in candidates:
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                log.warning("Skipping %s: not a readable report (%s)", path, err)
                continue
            if isinstance(report, dict) and "shard" in report and "metric_name" in report:
                problem = seal_problem(report)
                if problem:
                    raise ConfigError(f"shard report {path} {problem}; rerun that shard job, then merge again")
                found.append((path, report))
    return found


def _span(indices: list[int]) -> str:
    return f"{len(indices)} ({', '.join(map(str, indices[:6]))}{', ...' if len(indices) > 6 else ''})"


def _shard_images(path: Path, report: dict[str, Any], saved: dict[str, Any], part: Any) -> list[dict[str, Any]]:
    """The shard's ``metadata.json`` entries, after checking that its saved state, metadata and report agree: the
    same metric, image indices that belong to this shard, as many as the report says, each once."""
    shard, where = report["shard"], path.parent
    if saved.get("metric") != report["metric_name"]:
        raise ConfigError(f"{where / 'state' / 'state.json'} is a state of '{saved.get('metric')}', "
                          f"the report {path} is of '{report['metric_name']}'")  # fmt: skip
    metadata_path = where / "metadata.json"
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{metadata_path} cannot be read ({type(err).__name__}); rerun that shard job") from None
    problem = seal_problem(metadata)
    if problem or not isinstance(metadata.get("images"), list):
        raise ConfigError(f"{metadata_path} {problem or 'has no images list'}; rerun that shard job")
    listed = [e.get("index") if isinstance(e, dict) else None for e in metadata["images"]]
    judged = part.states.get("judgements")
    indices = sorted(judged.items) if isinstance(judged, PerImage) else sorted(i for i in listed if isinstance(i, int))
    expected = report["dataset_metadata"].get("shard_images")
    foreign = [i for i in indices if i % shard["count"] != shard["index"]]
    if foreign:
        raise ConfigError(f"{where / 'state'} holds images {foreign[:5]} that are not shard {shard['index']}'s")
    if expected is not None and len(indices) != expected:
        raise ConfigError(f"{where / 'state'} holds {len(indices)} images, its report {path} says {expected}")
    if sorted(listed, key=str) != sorted(indices, key=str):
        raise ConfigError(f"{metadata_path} lists images {_span(sorted(listed, key=str))}, "
                          f"the saved state {_span(indices)}")  # fmt: skip
    return metadata["images"]


def _group_key(report: dict[str, Any]) -> str:
    return canonical_json([report["technique_name"], report["technique_config"], report["metric_name"],
                           report["metric_config"], report["model"], report["seed"], report["shard"]["count"]])  # fmt: skip


def merge(paths: list[Path], out: Path) -> list[dict[str, Any]]:
    """Merge every complete set of shards under ``paths``; write each merged report to ``out/<run_id>/``."""
    groups: dict[str, dict[int, tuple[Path, dict[str, Any]]]] = {}
    for path, report in shard_reports(paths):
        shards = groups.setdefault(_group_key(report), {})
        index = report["shard"]["index"]
        if index not in shards or shards[index][1]["timestamp"] < report["timestamp"]:
            shards[index] = (path, report)  # of two runs of the same shard, the newest counts
    if not groups:
        raise ConfigError(f"no reports of shard jobs (shard.count > 1) under {', '.join(map(str, paths))}")
    merged = []
    for shards in groups.values():
        first = next(iter(shards.values()))[1]
        count = first["shard"]["count"]
        missing = sorted(set(range(count)) - set(shards))
        if missing:
            raise ConfigError(
                f"{first['technique_name']} × {first['metric_name']}: shards {missing} of {count} are missing "
                f"(found {sorted(shards)}); run them, then merge again"
            )
        merged.append(_merge_one([shards[i] for i in range(count)], out))
    return merged


def _merge_one(shards: list[tuple[Path, dict[str, Any]]], out: Path) -> dict[str, Any]:
    first = shards[0][1]
    context = RunContext(
        resolve_model(first["model"]), "cpu", torch.float32, first["seed"], RunSettings().resolved_cache_dir()
    )
    spec = MetricSpec(first["metric_name"], first["metric_config"], context, None)
    metric = spec.cls(spec.config, context)
    entries: list[dict[str, Any]] = []
    for path, report in shards:
        part = spec.cls(spec.config, context)
        try:
            saved = part.load_state(path.parent / "state")
        except DamagedState as err:
            raise ConfigError(f"{err}; rerun that shard job, then merge again") from None
        images = _shard_images(path, report, saved, part)
        metric.merge(part)
        entries += [{**entry, "file": str(path.parent / entry["file"])} for entry in images]
    total = first["dataset_metadata"].get("total_loaded")
    judged = metric.states.get("judgements")
    if isinstance(judged, PerImage) and isinstance(total, int) and sorted(judged.items) != list(range(total)):
        raise ConfigError(f"{first['technique_name']} × {first['metric_name']}: the shards hold images "
                          f"{_span(sorted(judged.items))}, the run has {total} (0 to {total - 1})")  # fmt: skip
    result = metric.compute()
    timestamp = time.time()
    run_id = make_run_id(first["technique_name"], first["technique_config"], first["metric_name"],
                         first["metric_config"], first["dataset_name"], timestamp)  # fmt: skip
    stats = [r.get("cache_stats", {}) for _, r in shards]
    report = {
        **{k: v for k, v in first.items() if k not in ("shard", "timings", "peak_memory")},
        "run_id": run_id,
        "timestamp": timestamp,
        "metric_result": {**result.to_dict(), "higher_is_better": metric.higher_is_better},
        "metric_state": metric.state_dict(),
        "dataset_metadata": {**{k: v for k, v in first["dataset_metadata"].items() if not k.startswith("shard")},
                             "total_loaded": sum(r["dataset_metadata"].get("shard_images", 0) for _, r in shards)},
        "cache_stats": {k: sum(s.get(k, 0) for s in stats) for k in ("images_generated", "images_reused",
                                                                      "judgements_reused")},
        "merged_from": [{"index": r["shard"]["index"], "run_id": r["run_id"], "report": str(p)} for p, r in shards],
        "timings": {"shards_total_s": round(sum(r["timings"].get("total_s", 0.0) for _, r in shards), 4)},
    }  # fmt: skip
    folder = out / run_id
    report = sealed(report)
    write_json(
        folder / "metadata.json", sealed({"run_id": run_id, "images": sorted(entries, key=lambda e: e["index"])})
    )
    write_json(folder / "report.json", report)
    log.info("%s = %s (merged %d shards) → %s", result.name, result.value, len(shards), folder / "report.json")
    return as_written(report)
