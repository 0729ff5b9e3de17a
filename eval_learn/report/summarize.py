"""``eval-learn summarize DIR``: the leaderboard of every run under DIR, as files beside the runs.

Writes ``DIR/leaderboard.csv``, ``DIR/leaderboard.md``, the figures (``DIR/figures/tradeoff.png``,
``bar_<metric>.png``, ``grid_<run_id>.png``) and ``DIR/report.html`` (all of it in one self-contained page).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval_learn.errors import ConfigError
from eval_learn.report.leaderboard import Leaderboard, gather
from eval_learn.storage import atomic_write

log = logging.getLogger(__name__)


@dataclass
class Summary:
    board: Leaderboard
    written: list[Path] = field(default_factory=list)
    figure_errors: list[str] = field(default_factory=list)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def summarize(root: Path, figures: bool = True, grid_images: int = 8) -> Summary:
    """Gather the reports under ``root``, write the table, figures and HTML page, and return what was done.
    A folder that does not exist is a :class:`ConfigError`; unreadable reports and failing figures are reported in
    the result, never raised."""
    root = Path(root)
    if not root.exists():
        raise ConfigError(f"'{root}' does not exist: give the folder of a run or a sweep (e.g. multirun/<date>/<time>)")
    if not root.is_dir():
        raise ConfigError(f"'{root}' is not a folder: give the folder of a run or a sweep")
    board = gather(root)
    if not board.reports_found and not board.unfinished:
        raise ConfigError(f"no runs under '{root}' (no report.json, no run_status.json): give the folder of a run or a "
                          "sweep, e.g. outputs/<date>/<time> or multirun/<date>/<time>")  # fmt: skip
    summary = Summary(board)
    for name, text in (("leaderboard.csv", board.csv()), ("leaderboard.md", board.markdown())):
        atomic_write(root / name, text.encode())
        summary.written.append(root / name)
    pictures: list[tuple[str, str, bytes]] = []
    grids: list[tuple[str, bytes]] = []
    if figures and board.rows:
        try:
            pictures, grids = _figures(board, root / "figures", grid_images, summary)
        except ImportError as err:  # matplotlib is a dependency; a broken install must not lose the table
            summary.figure_errors.append(f"no figures: {err}")
    from eval_learn.report.html import page

    atomic_write(root / "report.html", page(board, pictures, grids).encode())
    summary.written.append(root / "report.html")
    for problem in summary.figure_errors:
        log.warning("%s", problem)
    return summary


def _figures(
    board: Leaderboard, folder: Path, grid_images: int, summary: Summary
) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, bytes]]]:
    from eval_learn.report import figures as draw

    for old in [*folder.glob("grid_*.png"), *folder.glob("bar_*.png"), folder / "tradeoff.png"]:
        old.unlink(missing_ok=True)  # an earlier summary's pictures of runs no longer in the table
    pictures: list[tuple[str, str, bytes]] = []

    def save(name: str, figure: Any) -> bytes:
        data = draw.png(figure)
        atomic_write(folder / name, data)
        summary.written.append(folder / name)
        return data

    def attempt(what: str, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except Exception as err:  # noqa: BLE001 - one bad figure must not cost the others or the table
            summary.figure_errors.append(f"{what}: {type(err).__name__}: {err}")
            return None

    figure = attempt("trade-off figure", lambda: draw.tradeoff(board))
    if figure is not None:
        pictures.append(("Erasure against retention", "one point per row of the table", save("tradeoff.png", figure)))
    for name, chart in (attempt("bar charts", lambda: draw.bars(board)) or {}).items():
        pictures.append(("Metrics", name, save(f"bar_{_safe(name)}.png", chart)))
    grids: list[tuple[str, bytes]] = []
    if grid_images <= 0:
        return pictures, grids
    runs: dict[Path, tuple[str, str, dict[str, Path]]] = {}  # run folder → (caption, run id, metric → its folder)
    for row in board.rows:
        for result in row.results.values():
            caption = f"{row.label} · {row.model_label} · run {result.run_id} ({board.where(result.run_dir)})"
            runs.setdefault(result.run_dir, (caption, result.run_id, {}))[2][result.metric] = result.folder
    for run_dir, (caption, run_id, metrics) in runs.items():
        grid = attempt(f"image grid of {run_dir}", lambda c=caption, m=metrics: draw.image_grid(c, m, grid_images))
        if grid is not None:
            grids.append((caption, save(f"grid_{_safe(run_id)}.png", grid)))
    return pictures, grids
