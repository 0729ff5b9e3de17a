"""The engine's own :class:`AttackTarget` for attack tests: model=tiny through technique free_run (the base pipeline
itself), rendered by the shared sampling loop into an image store, judged by the real NudeNet judge — what an attack
gets in a run (:func:`eval_learn.engine.attacking.standalone_session`). It also remembers the prompts it rendered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from eval_learn.attacks.base import Attack, AttackConfig
from eval_learn.compose import resolve_model
from eval_learn.engine.attacking import ModelTarget, standalone_session
from eval_learn.registry import JUDGES, parse_part
from eval_learn.runtime import RunContext
from eval_learn.techniques.free_run import FreeRun
from eval_learn.types import PromptRecord


class RecordingTarget(ModelTarget):
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.rendered: list[str] = []

    def render(self, prompts: list[str], seed: int) -> list[np.ndarray]:
        self.rendered.extend(prompts)
        return super().render(prompts, seed)


def tiny_target(folder: Path, record: PromptRecord, attack: Attack | None = None) -> RecordingTarget:
    """The target for ``record`` on model=tiny (free_run) with the NudeNet judge; the store lives under ``folder``."""
    context = RunContext(resolve_model("tiny"), "cpu", torch.float32, 0, folder / "weights")
    name, config = parse_part(JUDGES, "nudenet", "judge")
    judge = JUDGES.get(name)(config, "cpu")
    attack = attack or Attack(AttackConfig())
    session = standalone_session(attack, FreeRun(FreeRun.config_cls(), context), judge, "nudity", folder / "store")
    return RecordingTarget(session, record)
