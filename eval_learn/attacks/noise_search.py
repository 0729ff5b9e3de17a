"""``noise_search``: more noise in the sampler, best of N — the noise-based probe of Lu et al., "When Are Concepts
Erased From Diffusion Models?", NeurIPS 2025.

DDIM with η ≥ 1 re-injects noise at every step (η = 1 is DDPM-like; above 1 the step adds more noise than the
forward process removed, the deterministic part taking |1 − ᾱ_{t−1} − σ_t²| under the root), and a variance scale
multiplies the injected noise further. Sampling the same prompt over an η × scale grid explores trajectories that
the deterministic sampler never visits; a concept that was only pushed off the usual trajectory can reappear on one
of them. The probe renders the grid in order (one generator per prompt, seeded with the prompt's seed and shared by
the whole grid, as the release does) and succeeds at the first image the judge flags; N (images rendered) is
recorded with the result, since a best-of-N rate grows with N.

Follows kevinlu4588/WhenAreConceptsErased @ 9a03e07fa74f81e50cc323146774c2afbbe94494, ``src/probes/noise_based_probe.py``
and ``src/configs/default.yaml`` (η 1.0 to 1.85 in six steps × variance scale 1.00 to 1.04, 24 images per prompt) and
its DDIM step in ``src/noisy_diffuser_scheduling/schedulers/eta_ddim_scheduler.py``. What differs: the release keeps
the image its ResNet-50 (or CLIP) ranks highest, we stop at the benchmark judge's first success; the run's step count
and guidance instead of 50 steps at 7.5; the technique's sampling changes apply (:mod:`eval_learn.attacks.probing`),
its scheduler excepted: the grid needs the noisy DDIM step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from eval_learn.attacks.base import Attack, AttackConfig, AttackOutcome, AttackTarget
from eval_learn.attacks.probing import first_success, scheduler_swapped, to_uint8
from eval_learn.configs import require
from eval_learn.types import PromptRecord

RELEASE = {
    "repository": "https://github.com/kevinlu4588/WhenAreConceptsErased",
    "commit": "9a03e07fa74f81e50cc323146774c2afbbe94494",
    "files": "src/probes/noise_based_probe.py, src/configs/default.yaml, "
    "src/noisy_diffuser_scheduling/schedulers/eta_ddim_scheduler.py",
}


@dataclass
class NoiseSearchConfig(AttackConfig):
    eta_values: list[float] = field(default_factory=lambda: [1.0, 1.17, 1.34, 1.51, 1.68, 1.85])
    variance_scales: list[float] = field(default_factory=lambda: [1.0, 1.02, 1.03, 1.04])

    def validate(self) -> None:
        super().validate()
        require(bool(self.eta_values) and all(e >= 0 for e in self.eta_values), "eta_values must be >= 0, at least one")
        require(bool(self.variance_scales) and all(v >= 0 for v in self.variance_scales),
                "variance_scales must be >= 0, at least one")  # fmt: skip


class NoisyDDIMScheduler(DDIMScheduler):
    """DDIM whose step allows η > 1 and scales the injected noise by ``variance_scale`` (ε-prediction only)."""

    variance_scale: float = 1.0

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: Any = None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True) -> Any:  # fmt: skip
        prev = timestep - self.config.num_train_timesteps // self.num_inference_steps
        alpha = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        x0 = (sample - (1 - alpha) ** 0.5 * model_output) / alpha**0.5
        sigma = eta * self._get_variance(timestep, prev) ** 0.5
        out = alpha_prev**0.5 * x0 + (1 - alpha_prev - sigma**2).abs() ** 0.5 * model_output
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)  # fmt: skip
            out = out + sigma * variance_noise * self.variance_scale
        return DDIMSchedulerOutput(prev_sample=out, pred_original_sample=x0) if return_dict else (out, x0)


def noisy_scheduler(pipe: Any, variance_scale: float) -> NoisyDDIMScheduler:
    config = pipe.scheduler.config
    require(config.get("prediction_type", "epsilon") == "epsilon", "noise_search needs an ε-prediction model")
    require(not config.get("clip_sample", False) and not config.get("thresholding", False),
            "noise_search's DDIM step does not clip or threshold x0")  # fmt: skip
    scheduler = NoisyDDIMScheduler.from_config(config)
    scheduler.variance_scale = variance_scale
    return scheduler


class NoiseSearch(Attack):
    name = "noise_search"
    config_cls = NoiseSearchConfig
    config: NoiseSearchConfig
    white_box = False
    algorithm_version = 2  # 2: samples with the technique's own sampling changes
    follows = RELEASE
    differs = "first judged success instead of the release's ResNet/CLIP best of N; the run's steps and guidance"

    def run(self, target: AttackTarget, record: PromptRecord) -> AttackOutcome:
        cfg = self.config
        pipe = target.pipeline()
        shared = torch.Generator("cpu").manual_seed(record.seed)  # one per prompt, used by the whole grid in order

        def render(eta: float, scale: float) -> np.ndarray:
            with scheduler_swapped(pipe, noisy_scheduler(pipe, scale)):
                return to_uint8(target.sample(record.prompt, shared, eta=eta, output_type="np"))

        tries = [({"eta": eta, "variance_scale": scale}, partial(render, eta, scale))
                 for eta in cfg.eta_values for scale in cfg.variance_scales]  # fmt: skip
        return first_success(self, target, record, tries)
