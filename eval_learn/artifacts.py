"""Run ids and the files a run writes: ``<output_dir>/<run_id>/{report.json, images/, metadata.json}``."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any


def make_run_id(
    technique_name: str,
    technique_config: Any,
    metric_name: Any,
    metric_config: Any,
    dataset_name: Any,
    timestamp: float,
) -> str:
    """First 8 hex chars of SHA-256 over names, resolved configs, dataset and timestamp (the seed page's formula)."""
    payload = {
        "technique": technique_name,
        "technique_config": technique_config,
        "metric": metric_name,
        "metric_config": metric_config,
        "dataset": dataset_name,
        "timestamp": timestamp,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]


def json_safe(value: Any) -> Any:
    """Valid JSON only: NaN and ±Infinity become null, tuples lists, paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
