"""The model under test as the engine gives it to an attack (:class:`eval_learn.engine.attacking.ModelTarget` over a
standalone session), for the attack tests: by default UCE (edited in closed form) erasing ``concept`` on
``model=tiny``, ``free_run`` as the base, renders through the shared sampling loop and the image store, and the
MiniWorld judge's verdict (its numbers mean nothing on tiny's images; the tests check the attacks' properties, not
what the judge sees)."""

from __future__ import annotations

from pathlib import Path

import torch

from eval_learn.attacks.base import Attack
from eval_learn.compose import resolve_model
from eval_learn.engine.attacking import ModelTarget, standalone_session
from eval_learn.judges.miniworld import MiniWorldJudgeConfig, MiniWorldJudgePart
from eval_learn.runtime import RunContext
from eval_learn.techniques.base import Technique
from eval_learn.techniques.uce import UCE, UCEConfig
from eval_learn.types import PromptRecord


def tiny_context(cache_dir: Path) -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=cache_dir)


def tiny_target(cache_dir: Path, concept: str = "red", technique: Technique | None = None,
                attack: Attack | None = None) -> ModelTarget:  # fmt: skip
    """``technique``: another prepared technique (on its own model) instead of UCE on tiny; ``attack``: the one the
    session's outcome cache is named for (the tests call ``attack.run`` themselves, so any attack will do)."""
    if technique is None:
        technique = UCE(UCEConfig(erase_concept=[concept]), tiny_context(Path(cache_dir)))
        technique.prepare()
    if attack is None:
        from eval_learn.attacks.noise_search import NoiseSearch, NoiseSearchConfig

        attack = NoiseSearch(NoiseSearchConfig())
    judge = MiniWorldJudgePart(MiniWorldJudgeConfig(), "cpu")
    session = standalone_session(attack, technique, judge, concept, Path(cache_dir) / "attack_store")
    return ModelTarget(session, PromptRecord(0, "", 0))  # the record only sets the guidance: the run's default
