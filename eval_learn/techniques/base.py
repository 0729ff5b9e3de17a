"""What every technique is: a base pipeline, possibly edited or wrapped, that renders prompts with their seeds."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL.Image import Image

from eval_learn.configs import require
from eval_learn.generation import generate_images
from eval_learn.models import load_pipeline
from eval_learn.runtime import RunContext, resolve_device
from eval_learn.types import PromptRecord

log = logging.getLogger(__name__)


@dataclass
class TechniqueConfig:
    """Settings every technique has. ``None`` means "the base model's default"."""

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    device: str | None = None  # overrides the run's device for this technique

    def erased_concepts(self) -> list[str] | None:
        """The concepts this technique removes (None: it removes nothing, e.g. the baseline)."""
        return None

    def validate(self) -> None:
        require(self.num_inference_steps is None or self.num_inference_steps > 0, "num_inference_steps must be > 0")
        require(self.guidance_scale is None or self.guidance_scale >= 0, "guidance_scale must be >= 0")
        if self.device is not None:
            resolve_device(self.device)


class Technique:
    """Base class. Subclasses that edit weights override :meth:`prepare`; sampling-time ones override
    :meth:`generate` (or pass extra pipeline arguments)."""

    name: ClassVar[str]
    config_cls: ClassVar[type[TechniqueConfig]] = TechniqueConfig

    def __init__(self, config: TechniqueConfig, context: RunContext) -> None:
        self.config = config
        self.context = context
        self.device = resolve_device(config.device) if config.device else context.device
        self.pipe: Any = None
        self.info: dict[str, Any] = {}  # recorded in the report (cache hits, training losses, ...)

    def prepare(self) -> None:
        """Load the base pipeline (and, in subclasses, erase the concept)."""
        self.pipe = load_pipeline(self.context.model, self.device, self.context.dtype)

    def generation_settings(self) -> dict[str, Any]:
        model = self.context.model
        return {
            "num_inference_steps": self.config.num_inference_steps or model.num_inference_steps,
            "guidance_scale": self.config.guidance_scale
            if self.config.guidance_scale is not None
            else model.guidance_scale,
            "height": model.height,
            "width": model.width,
            "batch_invariant": self.context.batch_invariant,
        }

    def generate(self, records: list[PromptRecord]) -> list[Image]:
        if self.pipe is None:
            raise RuntimeError(f"technique '{self.name}': call prepare() before generate()")
        return generate_images(self.pipe, records, **self.generation_settings())

    def close(self) -> None:
        """Free the pipeline (a multirun executes jobs in one process)."""
        self.pipe = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
