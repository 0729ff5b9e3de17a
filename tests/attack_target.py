"""The model under test as the engine gives it to an attack (:class:`eval_learn.engine.attacking.ModelTarget` over a
standalone session), for the attack tests. It renders through the shared sampling loop and the image store, with
``free_run`` as the base model, and remembers the prompts it rendered.

- :func:`tiny_target`: by default UCE (edited in closed form) erasing ``concept`` on ``model=tiny`` (or any prepared
  technique), judged by the MiniWorld judge (its numbers mean nothing on tiny's images; the tests check the attacks'
  properties, not what the judge sees).
- :func:`text_target`: ``free_run`` on ``model=tiny`` judged by the real NudeNet judge, for one prompt record (the
  text-only attacks' tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval_learn.attacks.base import Attack
from eval_learn.compose import resolve_model
from eval_learn.engine.attacking import ModelTarget, standalone_session
from eval_learn.judges.miniworld import MiniWorldJudgeConfig, MiniWorldJudgePart
from eval_learn.registry import JUDGES, parse_part
from eval_learn.runtime import RunContext
from eval_learn.techniques.base import Technique
from eval_learn.techniques.free_run import FreeRun
from eval_learn.techniques.uce import UCE, UCEConfig
from eval_learn.types import PromptRecord


class RecordingTarget(ModelTarget):
    """A ModelTarget that also lists the prompts it rendered (what a search judged)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rendered: list[str] = []

    def render(self, prompts: list[str], seed: int) -> list[np.ndarray]:
        self.rendered.extend(prompts)
        return super().render(prompts, seed)


def tiny_context(cache_dir: Path) -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=cache_dir)


def _target(technique: Technique, judge: Any, concept: str, store: Path, attack: Attack | None,
            record: PromptRecord) -> RecordingTarget:  # fmt: skip
    if attack is None:  # the session's outcome cache is named for it; the tests call ``attack.run`` themselves
        from eval_learn.attacks.noise_search import NoiseSearch, NoiseSearchConfig

        attack = NoiseSearch(NoiseSearchConfig())
    return RecordingTarget(standalone_session(attack, technique, judge, concept, store), record)


def tiny_target(cache_dir: Path, concept: str = "red", technique: Technique | None = None,
                attack: Attack | None = None) -> RecordingTarget:  # fmt: skip
    """``technique``: another prepared technique (on its own model) instead of UCE on tiny; ``attack``: the one the
    session's outcome cache is named for (any attack will do). The record only sets the guidance: the run's default."""
    if technique is None:
        technique = UCE(UCEConfig(erase_concept=[concept]), tiny_context(Path(cache_dir)))
        technique.prepare()
    judge = MiniWorldJudgePart(MiniWorldJudgeConfig(), "cpu")
    return _target(technique, judge, concept, Path(cache_dir) / "attack_store", attack, PromptRecord(0, "", 0))


def text_target(folder: Path, record: PromptRecord, attack: Attack | None = None) -> RecordingTarget:
    """The target for ``record`` on model=tiny (free_run) with the NudeNet judge; the store lives under ``folder``."""
    context = RunContext(resolve_model("tiny"), "cpu", torch.float32, 0, folder / "weights")
    name, config = parse_part(JUDGES, "nudenet", "judge")
    technique = FreeRun(FreeRun.config_cls(), context)
    return _target(technique, JUDGES.get(name)(config, "cpu"), "nudity", folder / "store", attack, record)
