"""Every report under a folder → one leaderboard: a row per configuration, a column per metric value.

A **row** is one technique configuration measured on one base model, for one concept, with one base seed: the
technique's name and its resolved config without the fields that cannot change a result (``device``, ``save_path``,
``load_path``, ``use_cache``; weights loaded from a file count by their SHA-256 instead), the model's id, revision and
generation settings, the concept the metric measured, and ``seed``. A **column** is a metric result (``asr_miniworld``,
``ua_ira_miniworld``) with its direction, its 95 % interval where the metric gives one, the number of images, and the
details worth reading beside it (UA, IRA near, IRA far).

**Newest wins.** When several complete runs give the same row the same metric result (a rerun, a larger ``limit``
after a smoke test), the one with the latest ``timestamp`` fills the cell and the others are listed as superseded:
nothing is averaged or counted twice. Each row names the runs its cells come from.

What is not a result is listed, never fatal: a run whose ``run_status.json`` is not ``complete`` (killed, failed),
a report that is not valid JSON, does not match the digest written with it (edited, or not written by eval_learn) or
lacks the report schema's fields (path and reason), and a shard's report (a report
with a ``shard`` field: one part of a split run, counted only once its shards are merged).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval_learn.detail_columns import DETAIL_COLUMNS
from eval_learn.storage import canonical_json, seal_problem
from eval_learn.technique_fields import NO_RESULT_FIELDS, RENAMED_FIELDS

log = logging.getLogger(__name__)

# Model fields that change images (the rest are defaults for other settings).
MODEL_FIELDS = ("id", "revision", "num_inference_steps", "guidance_scale", "height", "width")
# Details worth a column of their own, per metric registry name, and which way is better for each.
DETAIL_HIGHER_IS_BETTER = {detail: higher for columns in DETAIL_COLUMNS.values() for detail, higher in columns.items()}
SKIP_FOLDERS = {"images", "state", ".hydra", "figures"}  # never hold a report: not walked (they can be large)


class Malformed(ValueError):
    """A report that cannot be read as one: its reason is shown with its path."""


def arrow(higher_is_better: bool | None) -> str:
    return {True: "↑", False: "↓"}.get(higher_is_better, "")  # type: ignore[arg-type]


@dataclass
class Result:
    """One metric's value from one complete report."""

    report: Path
    run_dir: Path  # the run's folder (<run_id>/)
    folder: Path  # where this metric's metadata.json and images/ are
    run_id: str
    timestamp: float
    technique: str
    technique_key: dict[str, Any]  # the config fields that can change a result
    model: dict[str, Any]
    concept: str | None
    seed: Any
    metric: str  # registry name: asr
    name: str  # result name: asr_miniworld
    value: float | None
    higher_is_better: bool | None
    interval: tuple[float, float] | None
    n: int | None
    details: dict[str, float | None]

    @property
    def row_key(self) -> str:
        return canonical_json([self.technique, self.technique_key, self.model, self.concept, self.seed])


@dataclass
class Skipped:
    path: Path
    reason: str


@dataclass
class Column:
    name: str
    metric: str
    higher_is_better: bool | None
    has_interval: bool = False
    details: tuple[str, ...] = ()


@dataclass
class Row:
    technique: str
    technique_key: dict[str, Any]
    model: dict[str, Any]
    concept: str | None
    seed: Any
    results: dict[str, Result] = field(default_factory=dict)
    label: str = ""  # the technique with the settings that tell it apart from other rows of the same technique
    model_label: str = ""

    @property
    def run_ids(self) -> list[str]:
        return sorted({r.run_id for r in self.results.values()})


@dataclass
class Leaderboard:
    root: Path
    rows: list[Row] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)
    unfinished: list[Skipped] = field(default_factory=list)
    malformed: list[Skipped] = field(default_factory=list)
    shards: list[Skipped] = field(default_factory=list)
    superseded: list[Result] = field(default_factory=list)
    reports_found: int = 0
    runs_found: int = 0  # a multi run is one run, however many report files (one per metric, and its own) it holds

    def where(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix() or "."
        except ValueError:
            return str(path)

    # --- the table as text ---------------------------------------------------------------------------------------
    @property
    def several_seeds(self) -> bool:
        return len({canonical_json(r.seed) for r in self.rows}) > 1

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Headers and cells, formatted for reading (Markdown, HTML, the terminal)."""
        headers = ["technique", "model", "concept", *(["seed"] if self.several_seeds else [])]
        for c in self.columns:
            headers.append(f"{c.name} {arrow(c.higher_is_better)}".strip() + (" [95% CI]" if c.has_interval else ""))
            headers.append("n")
            headers += [f"{d} {arrow(DETAIL_HIGHER_IS_BETTER.get(d))}".strip() for d in c.details]
        headers.append("runs")
        cells = []
        for row in self.rows:
            line = [
                row.label,
                row.model_label,
                str(row.concept or "–"),
                *([str(row.seed)] if self.several_seeds else []),
            ]
            for c in self.columns:
                result = row.results.get(c.name)
                if result is None:
                    line += ["–", "–", *("–" for _ in c.details)]
                    continue
                text = _num(result.value)
                if result.interval is not None:
                    text += f" [{result.interval[0]:.2f}, {result.interval[1]:.2f}]"
                line += [text, str(result.n if result.n is not None else "–")]
                line += [_num(result.details.get(d)) for d in c.details]
            line.append(", ".join(row.run_ids))
            cells.append(line)
        return headers, cells

    def rule(self) -> str:
        return ("One row per technique configuration × base model × concept × seed; where several complete runs "
                "measured the same row and metric, the newest (by timestamp) fills the cell.")  # fmt: skip

    def notes(self) -> list[tuple[str, list[str]]]:
        """What was found but is not in the table, by section."""
        return [
            ("Unfinished runs (not in the table)", [f"{self.where(s.path)}: {s.reason}" for s in self.unfinished]),
            ("Unreadable reports (skipped)", [f"{self.where(s.path)}: {s.reason}" for s in self.malformed]),
            ("Shard reports (not in the table until their shards are merged)",
             [f"{self.where(s.path)}: {s.reason}" for s in self.shards]),
            ("Superseded by a newer run of the same configuration",
             [f"{self.where(r.report)}: {r.name} = {_num(r.value)} (run {r.run_id})" for r in self.superseded]),
        ]  # fmt: skip

    def markdown(self) -> str:
        """The table as Markdown; every text that came from a report (names, labels, concepts, paths) is escaped, so
        that it shows as written and never becomes markup or HTML."""
        headers, cells = self.table()
        lines = [f"# Leaderboard: {markdown_text(str(self.root))}", "", self.rule(), ""]
        if cells:
            lines += ["| " + " | ".join(map(markdown_text, headers)) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(map(markdown_text, line)) + " |" for line in cells]
        else:
            lines.append("No complete results.")
        for title, items in self.notes():
            if items:
                lines += ["", f"## {title}", "", *(f"- {markdown_text(item)}" for item in items)]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """One line per row, numbers at full precision, the technique's result-relevant config as JSON."""
        headers = ["technique", "label", "technique_config", "model", "model_config", "concept", "seed"]
        for c in self.columns:
            headers.append(f"{c.name} {arrow(c.higher_is_better)}".strip())
            if c.has_interval:
                headers += [f"{c.name} ci95 low", f"{c.name} ci95 high"]
            headers.append(f"{c.name} n")
            headers += [f"{c.name} {d} {arrow(DETAIL_HIGHER_IS_BETTER.get(d))}".strip() for d in c.details]
        headers.append("runs")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(headers)
        for row in self.rows:
            line: list[Any] = [row.technique, row.label, canonical_json(row.technique_key), row.model_label,
                               canonical_json(row.model), row.concept or "", row.seed]  # fmt: skip
            for c in self.columns:
                result = row.results.get(c.name)
                line.append("" if result is None else _raw(result.value))
                if c.has_interval:
                    interval = result.interval if result is not None else None
                    line += [_raw(interval[0]), _raw(interval[1])] if interval else ["", ""]
                line.append("" if result is None or result.n is None else result.n)
                line += ["" if result is None else _raw(result.details.get(d)) for d in c.details]
            line.append(" ".join(row.run_ids))
            writer.writerow(line)
        return out.getvalue()


# Markdown's markup characters; ``_`` only where it can start or end emphasis (not inside ``asr_miniworld``), ``]``
# only where it would close a link or image ("](", "][", "]:"; our interval cells "0.950 [0.87, 0.98]" stay as written).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*|~]|\](?=[(\[:])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def markdown_text(text: str) -> str:
    """``text`` as literal Markdown inline text: HTML's ``<``, ``>`` and ``&`` as entities, Markdown's markup characters
    behind a backslash, line breaks as spaces."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _num(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _raw(value: Any) -> Any:
    return "" if value is None else value


# --- reading reports ------------------------------------------------------------------------------------------------
def _no_constants(name: str) -> Any:
    raise Malformed(f"holds the non-JSON number {name}")


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise Malformed("not UTF-8 text") from None
    except OSError as err:
        raise Malformed(f"cannot be read: {err.strerror or err}") from None
    if not text.strip():
        raise Malformed("empty file")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as err:
        raise Malformed(f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None


def _need(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if key not in data:
        raise Malformed(f"has no '{where}{key}'")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise Malformed(f"'{where}{key}' is not a {names}: {value!r:.80}")
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def _interval(details: dict[str, Any]) -> tuple[float, float] | None:
    # "ci95" is the interval a metric recommends (clustered by prompt where prompts have several images); reports
    # written before it existed have "ci95_wilson" only.
    for key in sorted(details, key=lambda k: (k != "ci95", k != "ci95_wilson", k)):
        value = details[key]
        if key.startswith("ci95") and isinstance(value, list) and len(value) == 2:
            low, high = (_number(v) for v in value)
            if low is not None and high is not None:
                return (low, high)
    return None


def technique_key(config: dict[str, Any], info: Any) -> dict[str, Any]:
    """The technique config without the fields that cannot change a result; loaded weights count by digest. A report
    written before a field was renamed counts under the new name (the same technique, the same row)."""
    key = {RENAMED_FIELDS.get(k, k): v for k, v in config.items() if k not in NO_RESULT_FIELDS}
    if config.get("load_path"):
        digest = info.get("weights_sha256") if isinstance(info, dict) else None
        key["loaded_weights"] = digest or config["load_path"]
    return key


def _result(
    report: dict[str, Any], path: Path, run_dir: Path, folder: Path, metric: str, result: Any, metric_config: Any,
    dataset_metadata: Any,
) -> Result:  # fmt: skip
    where = f"metric_results.{metric}." if path.parent.name == "multi" else "metric_result."
    if not isinstance(result, dict):
        raise Malformed(f"'{where.rstrip('.')}' is not a mapping")
    name = _need(result, "name", str, where)
    if "value" not in result:
        raise Malformed(f"has no '{where}value'")
    value = result["value"]
    if value is not None and _number(value) is None:
        raise Malformed(f"'{where}value' is not a number: {value!r:.80}")
    details = result.get("details") or {}
    if not isinstance(details, dict):
        raise Malformed(f"'{where}details' is not a mapping")
    metric_config = metric_config if isinstance(metric_config, dict) else {}
    dataset_metadata = dataset_metadata if isinstance(dataset_metadata, dict) else {}
    model = report.get("model") if isinstance(report.get("model"), dict) else {}
    n = dataset_metadata.get("total_loaded", details.get("total_images"))
    higher = result.get("higher_is_better")
    return Result(
        report=path,
        run_dir=run_dir,
        folder=folder,
        run_id=report["run_id"],
        timestamp=float(report["timestamp"]),
        technique=report["technique_name"],
        technique_key=technique_key(report["technique_config"], report.get("technique_info")),
        model={k: model.get(k) for k in MODEL_FIELDS if k in model} or {"id": "unknown"},
        concept=metric_config.get("concept") or details.get("concept"),
        seed=report.get("seed"),
        metric=metric,
        name=name,
        value=value,
        higher_is_better=higher if isinstance(higher, bool) else None,
        interval=_interval(details),
        n=n if isinstance(n, int) and not isinstance(n, bool) else None,
        details={d: _number(details.get(d)) for d in DETAIL_COLUMNS.get(metric, ())},
    )


def parse_report(path: Path, data: Any) -> list[Result]:
    """The results of one report (one for a single run's ``report.json``, one per metric for ``multi/report.json``)."""
    if not isinstance(data, dict):
        raise Malformed("is not a JSON object")
    _need(data, "run_id", str)
    if _number(_need(data, "timestamp", (int, float))) is None:
        raise Malformed("'timestamp' is not a finite number")
    _need(data, "technique_name", str)
    _need(data, "technique_config", dict)
    if path.parent.name == "multi":
        run_dir = path.parent.parent
        results = _need(data, "metric_results", dict)
        configs = data.get("metric_configs") if isinstance(data.get("metric_configs"), dict) else {}
        metadata = data.get("dataset_metadata") if isinstance(data.get("dataset_metadata"), dict) else {}
        return [_result(data, path, run_dir, run_dir / m, m, r, configs.get(m), metadata.get(m))
                for m, r in results.items()]  # fmt: skip
    metric = _need(data, "metric_name", str)
    _need(data, "metric_result", dict)
    run_dir = path.parent.parent if (path.parent.parent / "multi" / "report.json").is_file() else path.parent
    return [_result(data, path, run_dir, path.parent, metric, data["metric_result"], data.get("metric_config"),
                    data.get("dataset_metadata"))]  # fmt: skip


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(report.json files, run_status.json files) under ``root``, without descending into image or state folders."""
    reports, statuses = [], []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_FOLDERS)
        if "report.json" in files:
            reports.append(Path(folder) / "report.json")
        if "run_status.json" in files:
            statuses.append(Path(folder) / "run_status.json")
    return reports, statuses


def _run_folder(report: Path) -> Path:
    """The run a report belongs to: a multi run keeps its metrics' reports one level down (``<run>/<metric>/``)."""
    if not (report.parent / "run_status.json").is_file() and (report.parent.parent / "run_status.json").is_file():
        return report.parent.parent
    return report.parent


def _status(run_dir: Path) -> tuple[str | None, str]:
    """A run's status (None: no status file, e.g. a report copied from elsewhere) and why it is not complete."""
    path = run_dir / "run_status.json"
    if not path.is_file():
        return None, ""
    try:
        data = read_json(path)
    except Malformed as err:
        return "unreadable", f"run_status.json {err}"
    status = data.get("status") if isinstance(data, dict) else None
    if status == "complete":
        return "complete", ""
    reason = f"status {status!r}"
    if status == "running":
        reason += " (still running, or killed: rerun the same command to resume)"
    if isinstance(data, dict) and data.get("failed_metrics"):
        reason += f"; failed metrics: {', '.join(map(str, data['failed_metrics']))}"
    if isinstance(data, dict) and data.get("error"):
        reason += f"; {str(data['error'])[:200]}"
    return str(status), reason


def gather(root: Path) -> Leaderboard:
    """Read every report under ``root`` into a leaderboard (see the module's docstring for the rules)."""
    root = Path(root)
    board = Leaderboard(root)
    reports, statuses = _walk(root)
    board.reports_found = len(reports)
    board.runs_found = len({_run_folder(p) for p in reports})
    unfinished: dict[Path, str] = {}
    for status_file in statuses:
        status, reason = _status(status_file.parent)
        if status != "complete":
            unfinished[status_file.parent] = reason
    board.unfinished = [Skipped(p, r) for p, r in sorted(unfinished.items())]

    results: list[Result] = []
    covered: set[Path] = set()  # run folders whose multi/report.json was read: their per-metric reports are in it
    multi = [p for p in reports if p.parent.name == "multi"]
    for path in [*multi, *(p for p in reports if p.parent.name != "multi")]:
        is_multi = path.parent.name == "multi"
        run_dir = (
            path.parent.parent if is_multi or (path.parent.parent / "multi" / "report.json").is_file() else path.parent
        )
        if not is_multi and run_dir in covered:
            continue
        if run_dir in unfinished:
            if is_multi:
                covered.add(run_dir)
            continue
        try:
            data = read_json(path)
            problem = seal_problem(data)  # a report eval_learn wrote and nobody changed since, or not a result
            if problem:
                raise Malformed(problem)
            if isinstance(data, dict) and data.get("shard") is not None:
                board.shards.append(Skipped(path, f"shard {canonical_json(data['shard'])} of run {data.get('run_id')}"))
                covered.add(run_dir)
                continue
            parsed = parse_report(path, data)
        except Malformed as err:
            board.malformed.append(Skipped(path, str(err)))
            continue
        if is_multi:
            covered.add(run_dir)
        results += parsed
    _fill(board, results)
    return board


def _fill(board: Leaderboard, results: list[Result]) -> None:
    """Rows and columns from results, the newest result of each row and metric winning."""
    newest: dict[tuple[str, str], Result] = {}
    for result in sorted(results, key=lambda r: (r.timestamp, r.run_id, str(r.report))):
        cell = (result.row_key, result.name)
        if cell in newest:
            board.superseded.append(newest[cell])
        newest[cell] = result
    rows: dict[str, Row] = {}
    columns: dict[str, Column] = {}
    for (key, name), result in newest.items():
        row = rows.setdefault(key, Row(result.technique, result.technique_key, result.model, result.concept,
                                       result.seed))  # fmt: skip
        row.results[name] = result
        column = columns.setdefault(name, Column(name, result.metric, result.higher_is_better,
                                                 details=tuple(DETAIL_COLUMNS.get(result.metric, ()))))  # fmt: skip
        column.has_interval = column.has_interval or result.interval is not None
    board.rows = list(rows.values())
    _label(board.rows, lambda r: r.technique, lambda r: r.technique_key, "label")
    _label(board.rows, lambda r: str(r.model.get("id")), lambda r: r.model, "model_label")
    board.rows.sort(key=lambda r: (r.model_label, str(r.concept), r.technique != "free_run", r.label,
                                   canonical_json(r.seed)))  # fmt: skip
    order = {"asr": 0, "ua_ira": 1}
    board.columns = sorted(columns.values(), key=lambda c: (order.get(c.metric, 2), c.name))
    board.superseded.sort(key=lambda r: str(r.report))


def _label(rows: list[Row], base: Any, config: Any, attr: str) -> None:
    """Name each row by ``base`` plus the settings that differ between rows of the same base (``esd lr=3e-4``)."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(base(row), []).append(row)
    for name, members in groups.items():
        keys = sorted({k for m in members for k in config(m)})
        varying = [k for k in keys if len({canonical_json(config(m).get(k)) for m in members}) > 1]
        for m in members:
            settings = " ".join(f"{k}={_setting(config(m)[k])}" for k in varying if config(m).get(k) is not None)
            setattr(m, attr, f"{name} ({settings})" if settings else name)


def _setting(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 24 else text[:12] + "…"  # a digest or a long prompt: enough to tell rows apart
