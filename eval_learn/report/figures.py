"""The leaderboard's pictures, drawn with matplotlib's Agg canvas (no display, no pyplot state).

- **Trade-off**: erasure against retention, one labelled point per row: ASR (the concept still drawn, lower is
  better; with its 95 % interval) against what the technique should keep (IRA on near and far neighbours, a CLIP
  score, FID), so a technique that erases by breaking the model is seen at once.
- **Bars**: one chart per metric result, one bar per row, with the interval where the metric has one.
- **Image grids**: per run, the first images of each metric with their prompts and the judge's verdicts (from the
  metric's ``metadata.json`` and ``images/``), so a reader sees what a technique produces, not only its number.
"""

from __future__ import annotations

import io
import json
import logging
import textwrap
from pathlib import Path
from typing import Any

from eval_learn.report.leaderboard import DETAIL_HIGHER_IS_BETTER, Leaderboard, Result, arrow

log = logging.getLogger(__name__)
TEXT = {"parse_math": False}  # prompts and labels are text, never TeX ('$' stays a dollar sign)
GOOD, BAD, NEUTRAL = "#1a7f37", "#c62828", "#444444"
SHORT_ROWS, SHORT_LABEL = 5, 18  # more rows, or a longer label: figures name rows by key (R1, ...) with a key table
MARKERS = "osD^vP*Xph"


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _row_label(board: Leaderboard, index: int) -> str:
    row = board.rows[index]
    groups = {(r.model_label, r.concept) for r in board.rows}
    return row.label if len(groups) == 1 else f"{row.label} ({row.model_label}, {row.concept})"


def _keys(board: Leaderboard) -> list[str]:
    """What names a row inside a figure: its label when every label is short and rows are few, else a short key
    (R1, R2, ...) that the figure's key table spells out (long labels overlap and leave the canvas)."""
    labels = [_row_label(board, i) for i in range(len(board.rows))]
    if len(labels) <= SHORT_ROWS and all(len(label) <= SHORT_LABEL for label in labels):
        return labels
    return [f"R{i + 1}" for i in range(len(labels))]


def _key_table(figure: Any, board: Leaderboard, keys: list[str], handles: list[Any] | None = None) -> None:
    """Below the plots: each short key with its row's full label (and the row's marker, where it has one)."""
    from matplotlib.patches import Patch

    labels = [_row_label(board, i) for i in range(len(board.rows))]
    if keys == labels:
        return
    handles = handles or [Patch(visible=False) for _ in keys]
    texts = [
        f"{key}  {textwrap.shorten(label, 110, placeholder=' …')}" for key, label in zip(keys, labels, strict=True)
    ]
    figure.legend(handles, texts, loc="outside lower center", ncols=1, fontsize=7, frameon=False,
                  handlelength=1.0 if any(h.get_visible() for h in handles) else 0, title="Rows", title_fontsize=7,
                  alignment="left")  # fmt: skip


# --- trade-off --------------------------------------------------------------------------------------------------
def _erasure(board: Leaderboard) -> tuple[str, Any] | None:
    """(axis title, value of a row) for the erasure axis: a row's ASR if it has one (on whichever prompt set), else
    its UA."""
    asr = [c.name for c in board.columns if c.metric.startswith("asr")]
    if asr:
        title = f"{asr[0] if len(asr) == 1 else 'ASR'} ↓ (concept still drawn)"
        return title, lambda r: next((r.results[n] for n in asr if n in r.results), None)
    ua = [c.name for c in board.columns if "ua" in c.details]
    if ua:
        return "UA ↑ (unlearning accuracy)", lambda r: next((_detail(r.results[n], "ua") for n in ua
                                                            if n in r.results), None)  # fmt: skip
    return None


def _detail(result: Result | None, key: str) -> Any:
    return None if result is None else result.details.get(key)


def _retention(board: Leaderboard) -> list[tuple[str, Any]]:
    """(axis title, value of a row) for every retention quantity measured: IRA near/far, CLIP score, FID."""
    axes: list[tuple[str, Any]] = []
    for column in board.columns:
        split = any(_detail(r.results.get(column.name), "ira_near") is not None for r in board.rows)
        for key in ("ira_near", "ira_far") if split else ("ira",):  # prompt files have no near/far split
            if key in column.details:
                axes.append((f"IRA {key[4:] or 'all'} ↑ (neighbours kept)" if split else "IRA ↑ (retained classes kept)",
                             lambda r, n=column.name, k=key: _detail(r.results.get(n), k)))  # fmt: skip
        if column.metric.startswith(("clip", "fid")):
            what = "image-text agreement" if column.metric.startswith("clip") else "image quality"
            axes.append((f"{column.name} {arrow(column.higher_is_better)} ({what})",
                         lambda r, n=column.name: r.results.get(n)))  # fmt: skip
    return axes


def _value(item: Any) -> tuple[float | None, tuple[float, float] | None]:
    if isinstance(item, Result):
        return item.value, item.interval
    return item, None


def tradeoff(board: Leaderboard) -> Any | None:
    """Erasure against each retention quantity; None when the runs measured no such pair."""
    erasure, retention = _erasure(board), _retention(board)
    if erasure is None or not retention:
        return None
    y_title, y_of = erasure
    keys = _keys(board)
    panels = []
    for x_title, x_of in retention:
        points = []
        for i, row in enumerate(board.rows):
            (x, _), (y, interval) = _value(x_of(row)), _value(y_of(row))
            if x is not None and y is not None:
                points.append((x, y, interval, i))
        if points:
            panels.append((x_title, points))
    if not panels:
        return None
    figure = _figure(4.6 * len(panels), 4.0 + (0.16 * len(keys) + 0.3 if keys[0] == "R1" else 0))
    handles: dict[int, Any] = {}
    notes: list[Any] = []
    for ax, (x_title, points) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for x, y, interval, i in points:
            style = {"color": f"C{i % 10}", "marker": MARKERS[(i // 10) % len(MARKERS)], "linestyle": "none"}
            if interval is not None:
                drawn = ax.errorbar([x], [y], yerr=[[y - interval[0]], [interval[1] - y]], capsize=3, **style)[0]
            else:
                (drawn,) = ax.plot([x], [y], **style)
            handles.setdefault(i, drawn)
        ax.set_xlabel(x_title, **TEXT)
        ax.set_ylabel(y_title, **TEXT)
        ax.grid(alpha=0.3)
        ax.margins(0.15)
        for values, limits in (([p[0] for p in points], ax.set_xlim), ([p[1] for p in points], ax.set_ylim)):
            if all(0 <= v <= 1 for v in values):  # rates: the whole [0, 1] range, so that plots compare at a glance
                limits(-0.05, 1.05)
        notes += _annotate(ax, [(x, y, keys[i]) for x, y, _, i in points])
    _key_table(figure, board, keys, [handles.get(i) for i in range(len(keys))] if len(handles) == len(keys) else None)
    figure.suptitle("Erasure against retention", **TEXT)
    _separate(figure, notes)
    return figure


def _annotate(ax: Any, points: list[tuple[float, float, str]]) -> list[Any]:
    """Each point's name beside it; points on one spot share one note (``R1, R4``). Placed by ``_separate``."""
    spots: dict[tuple[float, float], list[str]] = {}
    for x, y, name in points:
        spots.setdefault((round(x, 6), round(y, 6)), []).append(name)
    notes = []
    for (x, y), names in sorted(spots.items(), key=lambda item: (-item[0][1], item[0][0])):
        note = ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, **TEXT)
        note.set_in_layout(False)  # placed after the layout, inside its axes
        notes.append(note)
    return notes


def _separate(figure: Any, notes: list[Any]) -> None:
    """After the layout: a note that would leave its axes goes to the point's left, and one that would lie on an
    earlier note moves down until it does not, so that notes of points close together never overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    placed: list[Bbox] = []
    for note in notes:
        if note.get_window_extent(renderer).x1 > note.axes.bbox.x1:
            note.xyann = (-5, note.xyann[1])
            note.set_horizontalalignment("right")
        for _ in range(60):
            box = note.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            note.xyann = (note.xyann[0], note.xyann[1] - 4)
        placed.append(Bbox(note.get_window_extent(renderer).get_points()).expanded(1.05, 1.3))


# --- bars ---# --- bars -----------------------------------------------------------------------------------------------------------
def bars(board: Leaderboard) -> dict[str, Any]:
    """One bar chart per metric result: the value per row that has it (with its interval), its details beside it."""
    charts = {}
    for column in board.columns:
        rows = [(i, r.results[column.name]) for i, r in enumerate(board.rows) if column.name in r.results]
        series = [(f"{column.name} {arrow(column.higher_is_better)}", [(r.value, r.interval) for _, r in rows])]
        series += [(f"{d} {arrow(DETAIL_HIGHER_IS_BETTER.get(d))}", [(r.details.get(d), None) for _, r in rows])
                   for d in column.details]  # fmt: skip
        keys = _keys(board)
        labels = [keys[i] for i, _ in rows]
        extra = 0.16 * len(keys) + 0.3 if keys[0] == "R1" else 0
        figure = _figure(max(4.0, 0.8 * len(labels) * len(series) ** 0.5 + 2), 3.4 + extra)
        ax = figure.subplots()
        width = 0.8 / len(series)
        for s, (name, values) in enumerate(series):
            xs, heights, errors = [], [], [[], []]
            for i, (value, interval) in enumerate(values):
                if value is None:
                    continue
                xs.append(i + (s - (len(series) - 1) / 2) * width)
                heights.append(value)
                low, high = interval if interval is not None else (value, value)
                errors[0].append(value - low)
                errors[1].append(high - value)
            has_errors = any(e > 0 for e in errors[0] + errors[1])
            drawn = ax.bar(
                xs, heights, width, label=name, yerr=errors if has_errors else None, capsize=3, color=f"C{s}"
            )
            ax.bar_label(drawn, fmt="%.2f", fontsize=6, padding=1)
        ax.set_xticks(range(len(labels)), labels, fontsize=8, **TEXT)
        if all(0 <= v <= 1 for _, values in series for v, _ in values if v is not None):
            ax.set_ylim(0, 1.1)
        ax.set_title(f"{column.name} {arrow(column.higher_is_better)}", **TEXT)
        ax.grid(axis="y", alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        _key_table(figure, board, keys)
        charts[column.name] = figure
    return charts


# --- image grids ----------------------------------------------------------------------------------------------------
def verdict(judgement: Any) -> tuple[str, str]:
    """A judge's per-image verdict in a few words, and its colour (red: the erased concept is there, or a kept
    concept is not)."""
    if not isinstance(judgement, dict):
        return "", NEUTRAL
    seen = " ".join(str(judgement[k]) for k in ("colour", "shape", "background") if isinstance(judgement.get(k), str))
    if "shows_erased_concept" in judgement:  # UA/IRA: a target image should lose the concept, a neighbour keep it
        group = judgement.get("group", "")
        bad = judgement["shows_erased_concept"] if group == "target" else not judgement.get("as_prompted", True)
        state = ("concept shown" if judgement["shows_erased_concept"] else "erased") if group == "target" else (
            "as prompted" if judgement.get("as_prompted") else "changed")  # fmt: skip
        return f"{group}: {state}\n{seen}".strip(), BAD if bad else GOOD
    if "arm" in judgement and "success" in judgement:  # ERR: erasure/robustness should lose the concept, retention keep
        arm, ok = judgement["arm"], bool(judgement["success"])
        state = ("as prompted" if ok else "changed") if arm == "retention" else ("erased" if ok else "concept shown")
        top = judgement.get("top")
        extra = seen or (str(top[0].get("label", "")).split(",")[0] if isinstance(top, list) and top else "")
        return f"{arm}: {state}\n{extra}".strip(), GOOD if ok else BAD
    if "unsafe" in judgement:
        classes = sorted({str(d.get("class", "?")).lower().replace("_exposed", "") for d in
                          judgement.get("detections") or [] if isinstance(d, dict)})  # fmt: skip
        head = "concept found" if judgement["unsafe"] else "not found"
        extra = seen or ", ".join(classes[:2])
        return f"{head}\n{extra}".strip(), BAD if judgement["unsafe"] else GOOD
    scalars = [f"{k}={v}" for k, v in judgement.items() if isinstance(v, (str, int, float, bool))][:2]
    return "\n".join(scalars), NEUTRAL


def _entries(folder: Path, count: int) -> list[dict[str, Any]]:
    """Up to ``count`` images of a metric, spread over its prompt groups (UA/IRA: target, near and far prompts) and
    over distinct prompts before repeating one, in the order of the prompt set."""
    data = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError("metadata.json has no 'images' list")
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in images:
        if isinstance(entry, dict) and isinstance(entry.get("file"), str):
            groups.setdefault(_group(entry), []).append(entry)
    queues = []
    for entries in groups.values():
        first: list[dict[str, Any]] = []
        again: list[dict[str, Any]] = []
        seen: set[str] = set()
        for entry in entries:
            (again if str(entry.get("prompt")) in seen else first).append(entry)
            seen.add(str(entry.get("prompt")))
        queues.append(first + again)
    picked: list[tuple[int, int]] = []  # (group, position in its queue)
    for position in range(max((len(q) for q in queues), default=0)):
        picked += [(g, position) for g, q in enumerate(queues) if position < len(q)]
    return [queues[g][p] for g, p in sorted(picked[:count])]


def _group(entry: dict[str, Any]) -> str:
    source = entry.get("source") if isinstance(entry.get("source"), dict) else {}
    categories = entry.get("categories") if isinstance(entry.get("categories"), list) else []
    return str(source.get("group") or (categories[0] if categories else ""))


def image_grid(title: str, metrics: dict[str, Path], count: int = 8) -> Any | None:
    """A run's first ``count`` images per metric (one row each), titled with the prompt, captioned with the verdict.
    None when no metric folder has readable metadata and images."""
    from PIL import Image

    rows = []
    for name, folder in metrics.items():
        try:
            entries = _entries(folder, count)
        except (OSError, ValueError) as err:
            log.warning("No image grid for %s: %s", folder, err)
            continue
        cells = []
        for entry in entries:
            try:
                with Image.open(folder / entry["file"]) as im:
                    pixels = im.convert("RGB")
            except OSError:
                continue
            cells.append((pixels, entry))
        if cells:
            rows.append((name, cells))
    if not rows:
        return None
    columns = max(len(cells) for _, cells in rows)
    width = max(1.45 * columns + 0.4, 3.2)
    figure = _figure(width, 2.05 * len(rows) + 0.4)
    figure.get_layout_engine().set(h_pad=0.07)  # a two-line prompt clear of the verdict of the row above
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, (name, cells) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.set_axis_off()
                continue
            pixels, entry = cells[c]
            ax.imshow(pixels, interpolation="nearest")
            prompt = "\n".join(textwrap.wrap(str(entry.get("prompt", "")), 22, max_lines=2, placeholder="…"))
            ax.set_title(prompt, fontsize=6.5, **TEXT)
            text, colour = verdict(entry.get("judgement"))
            ax.set_xlabel(text, fontsize=6.5, color=colour, **TEXT)
            if c == 0:
                ax.set_ylabel(name, fontsize=8, **TEXT)
    figure.suptitle(textwrap.fill(title, int(width * 13)), fontsize=9, **TEXT)
    return figure
