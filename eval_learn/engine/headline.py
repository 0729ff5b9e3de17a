"""The few lines a run ends with: each metric's value and main details, and where the report is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval_learn.detail_columns import DETAIL_COLUMNS

# The details worth a glance, per metric result name prefix: the leaderboard's detail columns, and ASR's count and
# interval (the leaderboard has columns of its own for those).
HEADLINE_DETAILS = {
    "asr": ("unsafe_count", "total_images", "ci95"),
    **{metric: tuple(columns) for metric, columns in DETAIL_COLUMNS.items()},
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.3f}" for v in value) + "]"
    return str(value)


def result_line(name: str, result: dict[str, Any]) -> str:
    details = result.get("details", {})
    keys = next((k for prefix, k in HEADLINE_DETAILS.items() if name.startswith(prefix)), ())
    extra = ", ".join(f"{k} {_fmt(details[k])}" for k in keys if k in details)
    arrow = {True: " (higher is better)", False: " (lower is better)"}.get(result.get("higher_is_better"), "")
    return f"{result['name']} = {_fmt(result['value'])}{arrow}" + (f"; {extra}" if extra else "")


def summary_lines(report: dict[str, Any], folder: Path) -> list[str]:
    if "metric_results" in report:
        lines = [result_line(name, r) for name, r in report["metric_results"].items()]
        where = folder / "multi" / "report.json"
    else:
        lines = [result_line(report["metric_name"], report["metric_result"])]
        where = folder / "report.json"
    stats = report.get("cache_stats", {})
    if stats:
        lines.append(f"images generated {stats.get('images_generated')}, reused {stats.get('images_reused')}; "
                     f"verdicts reused {stats.get('judgements_reused')}")  # fmt: skip
    lines.append(f"report: {where}")
    return lines
