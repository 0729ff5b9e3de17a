"""Training data made by the base model itself: images rendered from prompts, kept as their VAE latent distributions.

Unlearning methods that were written for classifiers (SSD, SalUn) need a forget set and a retain set of *data*; for
text-to-image models their authors use images the base model generates from the forget and retain prompts (SalUn:
800 Stable Diffusion images of "a photo of a nude person" and as many of "a photo of a person wearing clothes"). The
images are encoded by the VAE once; each use draws a fresh sample from the latent distribution, as the CompVis code
does every time it encodes an image (``get_first_stage_encoding`` samples the posterior).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass
class PromptImages:
    """``stats[i]`` is image i's latent distribution (mean, std) and ``prompt_of[i]`` the index of its prompt."""

    stats: torch.Tensor  # [N, 2, C, h, w]
    prompt_of: torch.Tensor  # [N] long

    def state(self) -> dict[str, torch.Tensor]:
        return {"stats": self.stats.cpu(), "prompt_of": self.prompt_of.cpu()}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: Any) -> PromptImages:
        return cls(state["stats"].to(device), state["prompt_of"])

    def sample(self, index: torch.Tensor, generator: torch.Generator, scaling_factor: float) -> torch.Tensor:
        """Latents x_0 of images ``index``: one draw from each image's VAE posterior, scaled as the UNet sees it."""
        stats = self.stats[index.to(self.stats.device)]
        mean, std = stats[:, 0], stats[:, 1]
        return (mean + std * torch.randn(mean.shape, generator=generator).to(mean.device)) * scaling_factor


@torch.no_grad()
def render(pipe: Any, prompts: list[str], per_prompt: int, *, steps: int, guidance_scale: float, seed: int,
           height: int, width: int, rows: int = 8, desc: str = "training images") -> PromptImages:  # fmt: skip
    """``per_prompt`` images of every prompt (image i: prompt i mod the number of prompts, seed ``seed + i``) with
    the pipeline's own scheduler, encoded by its VAE. Interleaved, so that a batch of consecutive images mixes
    the prompts."""
    n = per_prompt * len(prompts)
    prompt_of = torch.arange(n) % len(prompts)
    vae = pipe.vae
    stats = []
    for start in tqdm(range(0, n, rows), desc=desc, leave=False, mininterval=2.0):
        batch = list(range(start, min(start + rows, n)))
        images = pipe(
            prompt=[prompts[int(prompt_of[i])] for i in batch],
            generator=[torch.Generator("cpu").manual_seed(seed + i) for i in batch],
            num_inference_steps=steps, guidance_scale=guidance_scale, height=height, width=width, output_type="pt",
        ).images  # fmt: skip
        dist = vae.encode(images.to(vae.device, vae.dtype) * 2 - 1).latent_dist
        stats.append(torch.stack([dist.mean, dist.std], dim=1).float())
    return PromptImages(torch.cat(stats), prompt_of)
