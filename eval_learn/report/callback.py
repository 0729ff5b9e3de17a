"""The Hydra callback that ends every multirun with its leaderboard (registered in ``conf/config.yaml`` under
``hydra.callbacks.leaderboard``; ``~hydra.callbacks.leaderboard`` turns it off, ``hydra.callbacks.leaderboard.figures=
false`` keeps the tables only).

It runs in the process that launched the sweep, after every job has ended, with any launcher (basic, joblib,
submitit: Hydra calls ``on_multirun_end`` once the launcher returns). It never fails the sweep: a problem with the
table is logged. Runs of the sweep that did not finish are recorded in :data:`UNFINISHED` so that the command's exit
code can say so even when the jobs ran in other processes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
UNFINISHED: list[str] = []  # "path: reason" of the runs of the last sweep that are not complete


class LeaderboardCallback(Callback):
    def __init__(self, figures: bool = True, grid_images: int = 8) -> None:
        self.figures = figures
        self.grid_images = grid_images

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from eval_learn.report.summarize import summarize

        folder = Path(config.hydra.sweep.dir)
        if not folder.is_dir():  # every job was refused before it wrote anything
            return
        try:
            summary = summarize(folder, figures=self.figures, grid_images=self.grid_images)
        except Exception as err:  # noqa: BLE001 - the runs are done and written; the table is a convenience
            log.warning("No leaderboard for %s: %s: %s", folder, type(err).__name__, err)
            return
        board = summary.board
        UNFINISHED[:] = [f"{board.where(s.path)}: {s.reason}" for s in board.unfinished]
        for line in board.markdown().splitlines():
            log.info(line)
        log.info("Leaderboard: %s (and leaderboard.csv, report.html)", folder / "leaderboard.md")
