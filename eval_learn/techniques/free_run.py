"""``free_run``: the unmodified base model, the baseline every erasure number is read against."""

from __future__ import annotations

from eval_learn.techniques.base import Technique, TechniqueConfig


class FreeRun(Technique):
    name = "free_run"
    config_cls = TechniqueConfig
