"""``trasce``: Trajectory Steering for Concept Erasure — Jain, Kobayashi, Shibuya, Takida, Memon, Togelius,
Mitsufuji, "TraSCE: Trajectory Steering for Concept Erasure", arXiv:2412.07658 (2024).

TraSCE changes no weight. Every denoising step runs three noise estimates on the same latent z: unconditional ε_u,
the prompt's ε_p and the concept's ε_c (the concept's text is both the negative prompt and the steering target), and
does two things with them:

1. **Localized steering of the latent.** A loss that is large only where the prompt's estimate is close to the
   concept's, L(z) = −s_l · exp(−‖ε_p(z) − ε_c(z)‖₂ / σ), is descended once per step, z ← z − s_d · ∂L/∂z, through
   the UNet. Far from the concept the exponential kernel makes the gradient vanish, so ordinary prompts keep their
   trajectory; close to it the latent is pushed until the two estimates separate.
2. **Modified negative prompting.** The guided estimate is ε̂ = ε_u + w · (ε_p − ε_c): the negative prompt replaces
   the unconditional branch only in the guidance direction, not as the base (diffusers' negative prompting is
   ε_c + w · (ε_p − ε_c)). For a prompt unrelated to the concept this stays close to plain guidance; near it the
   guidance direction loses the concept.

As in the authors' release, ε̂ is computed from the estimates *before* the latent moves, and the scheduler steps
from the steered latent: z_{t−1} = step(ε̂(z_t), t, z_t − s_d ∂L/∂z_t). It steers at every step (the release's early
stop is commented out) unless ``steer_steps`` limits it to the first steps. s_l = ``guidance_loss_scale``,
s_d = ``discriminator_guidance_scale``, σ = ``sigma``; their defaults are the release README's nudity command
(1.5, 1.0, 2; its argparse defaults 15, 5, 1 are what the predecessor ran, and no README command uses them).

The loss is summed over the images of a call, each with its own norm, so an image's gradient is its own: the release
renders one image per call and takes the norm over that batch of one; over a batch of several it would couple them.

It runs through the shared sampling loop: :meth:`TraSCE.modify_pipeline` wraps the base pipeline's own components in
:class:`TraSCEPipeline` (any Stable Diffusion 1.x/2.x model, edited weights included) with the release's DDIM
scheduler, and :meth:`TraSCE.sampling_arguments` passes the settings with each call. Each step costs three UNet
passes and one backward pass, sampled in float32 as the release does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

from eval_learn.configs import require
from eval_learn.errors import RunError
from eval_learn.techniques.base import Technique, TechniqueConfig

log = logging.getLogger(__name__)

# The concept texts of the release README's commands (--concept_erasure, also passed as --negative_prompt); any
# other concept uses its own name, as the README's style and object commands do ("Van Gogh", "French Horn").
CONCEPT_TEXTS: dict[str, str] = {
    "nudity": "naked, nude, bare, exposed, Stripped, topless, male genitalia, penis, buttocks",
    "violence": "hate, harassment, violence, suffering, humiliation, harm, suicide, blood",
}


@dataclass
class TraSCEConfig(TechniqueConfig):
    erase_concept: str = "nudity"
    concept_text: str | None = None  # the concept's text (steering target and negative prompt); null: the release's
    guidance_loss_scale: float = 1.5  # s_l, the loss's magnitude
    discriminator_guidance_scale: float = 1.0  # s_d, the step on the latent
    sigma: float = 2.0  # σ, the width of the exponential kernel
    negative_prompting: bool = True  # ε_u + w(ε_p − ε_c); false: plain guidance, the concept only steers
    steer_steps: int | None = None  # steer during the first N steps only; null: every step (the release)
    scheduler: Literal["ddim", "pipeline"] = "ddim"  # the release's DDIM built from the model's scheduler config
    sampling_dtype: Literal["float32", "run"] = "float32"  # the release samples in float32

    def erased_concepts(self) -> list[str] | None:
        return [self.erase_concept]

    def text(self) -> str:
        if self.concept_text is not None:
            return self.concept_text
        return CONCEPT_TEXTS.get(self.erase_concept.strip().lower(), self.erase_concept)

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept must be non-empty")
        require(self.concept_text is None or bool(self.concept_text.strip()), "concept_text must be null or non-empty")
        for key in ("guidance_loss_scale", "discriminator_guidance_scale", "sigma"):
            value = getattr(self, key)
            require(math.isfinite(value) and value > 0, f"{key} must be a finite number > 0, got {value}")
        require(self.steer_steps is None or self.steer_steps > 0,
                f"steer_steps must be null (every step) or > 0, got {self.steer_steps}")  # fmt: skip


@dataclass(frozen=True)
class Steering:
    """The steering settings one pipeline call uses."""

    loss_scale: float
    step_scale: float
    sigma: float
    steps: int | None = None  # first steps that steer; None: all

    def active(self, step: int) -> bool:
        return self.steps is None or step < self.steps


def steering_loss(eps_prompt: torch.Tensor, eps_concept: torch.Tensor, loss_scale: float, sigma: float) -> torch.Tensor:
    """−s_l · Σ_b exp(−‖ε_p[b] − ε_c[b]‖₂ / σ): each image's own distance, summed so each gets its own gradient."""
    distance = torch.linalg.vector_norm((eps_prompt - eps_concept).flatten(1), dim=1)
    return -loss_scale * torch.exp(-distance / sigma).sum()


class TraSCEPipeline(StableDiffusionPipeline):
    """Stable Diffusion sampling with TraSCE's three estimates, latent steering and modified negative prompting.

    Called like the base pipeline by the shared loop (``prompt`` or ``prompt_embeds``, per-row generators, steps,
    guidance, size, ``output_type``) plus ``concept_prompt``, ``steering`` and ``negative_prompting``."""

    @classmethod
    def over(cls, pipe: Any) -> TraSCEPipeline:
        missing = [
            c for c in ("vae", "text_encoder", "tokenizer", "unet", "scheduler") if getattr(pipe, c, None) is None
        ]
        if missing or getattr(pipe, "text_encoder_2", None) is not None:
            raise RunError(
                f"TraSCE runs on Stable Diffusion 1.x/2.x pipelines (one CLIP text encoder); {type(pipe).__name__} "
                + (f"lacks {missing}" if missing else "has two text encoders (SDXL)")
            )
        built = cls(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                    scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, image_encoder=None,
                    requires_safety_checker=False)  # fmt: skip
        built.set_progress_bar_config(disable=True)
        return built

    def __call__(  # type: ignore[override]
        self,
        prompt: str | list[str] | None = None,
        *,
        concept_prompt: str,
        steering: Steering,
        negative_prompting: bool = True,
        prompt_embeds: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        step_callback: Any = None,
    ) -> StableDiffusionPipelineOutput:
        # The shared loop calls pipelines under inference_mode; steering needs autograd through the UNet.
        with torch.inference_mode(False), torch.no_grad():
            return self._sample(prompt, concept_prompt, steering, negative_prompting, prompt_embeds, generator,
                                num_inference_steps, guidance_scale, height, width, latents, output_type,
                                step_callback)  # fmt: skip

    def _sample(self, prompt: Any, concept_prompt: str, steering: Steering, negative_prompting: bool,
                prompt_embeds: torch.Tensor | None, generator: Any, num_inference_steps: int, guidance_scale: float,
                height: int | None, width: int | None, latents: torch.Tensor | None, output_type: str,
                step_callback: Any) -> StableDiffusionPipelineOutput:  # fmt: skip
        device = self._execution_device
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, _ = self.encode_prompt(prompts, device, 1, False)
        prompt_embeds = prompt_embeds.clone()  # maybe made under inference_mode: a normal tensor for autograd
        batch = prompt_embeds.shape[0]
        uncond, _ = self.encode_prompt([""] * batch, device, 1, False)
        concept, _ = self.encode_prompt([concept_prompt] * batch, device, 1, False)
        embeds = torch.cat([uncond, prompt_embeds, concept.to(prompt_embeds.dtype)])
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        z = self.prepare_latents(batch, self.unet.config.in_channels, height, width, prompt_embeds.dtype, device,
                                 generator, None if latents is None else latents.clone())  # fmt: skip
        for i, t in enumerate(self.scheduler.timesteps):
            steer = steering.active(i)
            with torch.enable_grad():
                if steer:
                    z = z.detach().requires_grad_()
                model_input = self.scheduler.scale_model_input(torch.cat([z] * 3), t)
                eps = self.unet(model_input, t, encoder_hidden_states=embeds).sample
                eps_u, eps_p, eps_c = eps.chunk(3)
                if steer:
                    loss = steering_loss(eps_p, eps_c, steering.loss_scale, steering.sigma)
                    (gradient,) = torch.autograd.grad(loss, z)
                    z = z.detach() - steering.step_scale * gradient
            eps_u, eps_p, eps_c = eps_u.detach(), eps_p.detach(), eps_c.detach()
            negative = eps_c if negative_prompting else eps_u
            noise = eps_u + guidance_scale * (eps_p - negative)
            if step_callback is not None:
                step_callback(i, t, z, noise, (eps_u, eps_p, eps_c))
            z = self.scheduler.step(noise, t, z).prev_sample
        if output_type == "latent":
            return StableDiffusionPipelineOutput(images=z, nsfw_content_detected=None)
        image = self.vae.decode(z / self.vae.config.scaling_factor, return_dict=False)[0]
        image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * batch)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=None)


class TraSCE(Technique):
    name = "trasce"
    config_cls = TraSCEConfig
    config: TraSCEConfig

    def sampling_dtype(self) -> torch.dtype:
        return torch.float32 if self.config.sampling_dtype == "float32" else self.context.dtype

    def steering(self) -> Steering:
        cfg = self.config
        return Steering(cfg.guidance_loss_scale, cfg.discriminator_guidance_scale, cfg.sigma, cfg.steer_steps)

    def modify_pipeline(self, pipe: Any) -> Any:
        traced = TraSCEPipeline.over(pipe)
        if self.config.scheduler == "ddim":
            traced.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        log.info("TraSCE: concept '%s', %s, negative prompting %s", self.config.text()[:80], self.steering(),
                 self.config.negative_prompting)  # fmt: skip
        return traced

    def sampling_arguments(self, pipe: Any, prompts: list[str]) -> dict[str, Any]:
        cfg = self.config
        return {"concept_prompt": cfg.text(), "steering": self.steering(), "negative_prompting": cfg.negative_prompting}

    def sampling_settings(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "concept_text": cfg.text(),
            "guidance_loss_scale": cfg.guidance_loss_scale,
            "discriminator_guidance_scale": cfg.discriminator_guidance_scale,
            "sigma": cfg.sigma,
            "negative_prompting": cfg.negative_prompting,
            "steer_steps": "all" if cfg.steer_steps is None else cfg.steer_steps,
            "scheduler": cfg.scheduler,
            "dtype": str(self.sampling_dtype()).removeprefix("torch."),
        }

    def fingerprint(self) -> dict[str, Any]:
        """Keyed by the text the sampler uses, so a change of the built-in texts never reuses old images."""
        base = super().fingerprint()
        return {**base, "config": {**base["config"], "concept_text": self.config.text()}}
