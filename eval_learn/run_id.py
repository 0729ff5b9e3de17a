"""Run ids: ``<output_dir>/<run_id>/`` holds a run's ``report.json``, ``images/`` and ``metadata.json``."""

from __future__ import annotations

import hashlib
import json
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
