"""A base model as a run sees it: the weights it names and the generation defaults that belong to them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval_learn.configs import require
from eval_learn.guidance import check_guidance_scale
from eval_learn.models.hashing import weights_digest
from eval_learn.models.locations import MINIWORLD_DIR

BUILTIN_MODELS = ("tiny", "miniworld")


@dataclass
class ModelSpec:
    name: str
    id: str
    revision: str | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512
    # The concept a metric measures when neither it nor the technique names one (e.g. for the free_run baseline).
    default_concept: str = "nudity"
    # Prompt set each metric family uses by default with this model ("auto"); empty for real models (→ I2P etc.).
    default_datasets: dict[str, str] = field(default_factory=dict)
    # torch CPU threads for this model when the run sets none (num_threads): the offline models' operations are too
    # small to gain from a second thread, and waking it costs more than it saves (MiniWorld generation, idle 2-core
    # machine: 15 s on one thread, 29 s on two sleeping-when-idle threads). null: torch's default.
    cpu_threads: int | None = None

    @property
    def builtin(self) -> bool:
        return self.id in BUILTIN_MODELS

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the weights (for the technique weight cache); not the generation defaults. A local folder
        (and the shipped MiniWorld) also counts its weight files' contents, so retrained weights never meet a cache
        entry trained on the old ones."""
        if self.builtin:
            folder = MINIWORLD_DIR if self.id == "miniworld" else None  # tiny is built from code
        else:
            folder = Path(self.id) if os.path.isdir(self.id) else None
        weights = {"weights": weights_digest(folder)} if folder is not None else {}
        return {"id": self.id, "revision": self.revision, **weights}

    def validate(self) -> None:
        require(self.num_inference_steps > 0, "num_inference_steps must be positive")
        require(self.cpu_threads is None or self.cpu_threads > 0, "cpu_threads must be a positive integer or null")
        check_guidance_scale(self.guidance_scale)
        require(self.height % 8 == 0 and self.width % 8 == 0, "height and width must be multiples of 8")
        require(bool(self.id), "id must name a hub model, a local folder or a built-in model")
