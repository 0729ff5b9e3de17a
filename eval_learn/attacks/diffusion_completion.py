"""``diffusion_completion``: the base model starts the image, the model under test finishes it — the diffusion
completion probe of Lu et al., "When Are Concepts Erased From Diffusion Models?", NeurIPS 2025.

The base model denoises the prompt's seeded noise for the first k steps; the model under test takes the partial
latent and runs the remaining steps of the same schedule. An erasure that only steers the first, layout-setting
steps away from the concept is undone when those steps are not its own; one that removed the concept from the model
keeps it out even from a started image. Each k of ``base_steps`` is one try; the probe succeeds at the first image
the judge flags. With k = 0 the image is the model under test's own, with k = all steps the base model's.

Follows kevinlu4588/WhenAreConceptsErased @ 9a03e07fa74f81e50cc323146774c2afbbe94494,
``src/probes/diffusion_completion_probe.py``: its ``interrupt_steps`` [0, 1, 2] stop the base model after steps
0, 1, 2, i.e. after k = 1, 2, 3 steps (the paper also shows 5 and 10), DDIM on both sides. What differs: the run's
step count, guidance and scheduler instead of 50 DDIM steps at 7.5; the judge's verdict instead of saving images for
a CLIP/classifier score. The model under test finishes with its own sampling changes
(:mod:`eval_learn.attacks.probing`); those that count steps (SLD's warm-up, SAFREE's SVF switch, SAeUron's per-step
features) count from the first step it takes, not from step k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from eval_learn.attacks.base import Attack, AttackConfig, AttackOutcome, AttackTarget
from eval_learn.attacks.probing import first_success, generator, scheduler_swapped, to_uint8
from eval_learn.configs import require
from eval_learn.types import PromptRecord

RELEASE = {
    "repository": "https://github.com/kevinlu4588/WhenAreConceptsErased",
    "commit": "9a03e07fa74f81e50cc323146774c2afbbe94494",
    "files": "src/probes/diffusion_completion_probe.py",
}


@dataclass
class DiffusionCompletionConfig(AttackConfig):
    base_steps: list[int] = field(default_factory=lambda: [1, 2, 3])  # k: steps the base model takes first

    def validate(self) -> None:
        super().validate()
        require(bool(self.base_steps), "base_steps must list at least one k")
        require(all(k >= 0 for k in self.base_steps), "base_steps must be >= 0")


def tail_scheduler(scheduler: Any, skip: int) -> Any:
    """A copy of ``scheduler`` whose timesteps start after the first ``skip`` of the schedule (the step size and
    everything else stay those of the full schedule)."""

    class Tail(type(scheduler)):  # type: ignore[misc]
        def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
            super().set_timesteps(*args, **kwargs)
            self.timesteps = self.timesteps[skip:]

    return Tail.from_config(scheduler.config)


def initial_noise(pipe: Any, seed: int, settings: dict[str, Any]) -> torch.Tensor:
    """The noise the pipeline would draw itself for this seed (same generator and shape; the pipeline scales given
    latents by its scheduler's ``init_noise_sigma`` itself)."""
    factor = pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, int(settings["height"]) // factor, int(settings["width"]) // factor)
    return randn_tensor(shape, generator=generator(seed), device=pipe.unet.device, dtype=pipe.unet.dtype)


def completed(target: AttackTarget, prompt: str, seed: int, k: int) -> np.ndarray:
    """The image whose first ``k`` steps the base model took and whose remaining steps the model under test took."""
    settings = target.generation_settings()
    base, erased = target.base_pipeline(), target.pipeline()
    steps = int(settings["num_inference_steps"])
    require(k <= steps, f"base_steps {k} exceeds the run's {steps} sampling steps")
    latents = initial_noise(base, seed, settings)
    if k > 0:

        def stop(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if i == k - 1:
                pipe._interrupt = True
            return tensors

        latents = target.sample(prompt, generator(seed), base=True, latents=latents, output_type="latent",
                                callback_on_step_end=stop)  # fmt: skip
        latents = latents / erased.scheduler.init_noise_sigma  # the pipeline scales what it is given
    with scheduler_swapped(erased, tail_scheduler(erased.scheduler, k)):
        images = target.sample(prompt, generator(seed), latents=latents.to(erased.unet.device, erased.unet.dtype),
                               output_type="np")  # fmt: skip
    return to_uint8(images)


class DiffusionCompletion(Attack):
    name = "diffusion_completion"
    config_cls = DiffusionCompletionConfig
    config: DiffusionCompletionConfig
    needs_base_model = True
    white_box = False
    algorithm_version = 2  # 2: samples with the technique's own sampling changes
    follows = RELEASE
    differs = "the run's steps, guidance and scheduler; judged by the benchmark's judge; early stop at success"

    def run(self, target: AttackTarget, record: PromptRecord) -> AttackOutcome:
        tries = [({"base_steps": k}, partial(completed, target, record.prompt, record.seed, k))
                 for k in self.config.base_steps]  # fmt: skip
        return first_success(self, target, record, tries)
