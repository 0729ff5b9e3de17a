"""``sld``: Safe Latent Diffusion — Schramowski, Brack, Deiseroth, Kersting, "Safe Latent Diffusion: Mitigating
Inappropriate Degeneration in Diffusion Models", CVPR 2023 (arXiv:2211.05105).

SLD leaves the weights alone and adds a third noise estimate, conditioned on a safety concept S, to classifier-free
guidance, pushing each step away from S where the prompt's estimate is close to it:

    ε̄ = ε(z) + s_g · (ε(z, p) − ε(z) − γ)                                        (eq. 3)
    γ_t = μ ⊙ (ε(z, S) − ε(z)) + s_m · ν_t                                          (eqs. 4, 7)
    μ = min(1, s_S · |ε(z, p) − ε(z, S)|) where ε(z, p) − ε(z, S) < λ, else 0       (eqs. 5, 6, element-wise)
    ν_{t+1} = β_m · ν_t + (1 − β_m) · γ_t                                           (eq. 8)

with s_S = ``sld_guidance_scale``, λ = ``sld_threshold``, s_m = ``sld_momentum_scale``, β_m = ``sld_mom_beta``; γ is
subtracted only from step ``sld_warmup_steps`` on, while the momentum ν builds up from the first step. (The paper
prints μ with max(1, ·); its authors' implementation, which diffusers carries, clamps at 1, and that is what runs
here.) ``preset`` picks the paper's hyper-parameter sets (weak, medium, strong, max: diffusers' ``SafetyConfig``,
where weak's s_S is 20 — the predecessor used 200); a field given explicitly overrides its preset value.

The safety concept is ``erase_concept``, used verbatim as S's text; the special value ``inappropriate`` (the default)
stands for the paper's safety concept, the text listing I2P's inappropriate categories (hate, harassment, violence,
..., nudity, ...). The predecessor accepted a concept and always guided away from that fixed text; here the text
sent to the pipeline is recorded with every image.

It runs through the shared sampling loop: :meth:`SLD.modify_pipeline` wraps the base pipeline's own components
(UNet, text encoder, VAE, scheduler: any Stable Diffusion 1.x/2.x model, edited weights included) in diffusers'
``StableDiffusionPipelineSafe``, a port of the authors' release whose images equal the release's (a parity test
checks it), and :meth:`SLD.sampling_arguments` passes the SLD
settings with each call; seeds, batching and metadata stay the loop's. Each step costs a third UNet pass.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from eval_learn.configs import did_you_mean, require
from eval_learn.errors import RunError
from eval_learn.techniques.base import Technique, TechniqueConfig

log = logging.getLogger(__name__)

# The paper's safety concept (SLD §3) as the authors' release (ml-research/safe-latent-diffusion, SLDPipeline) writes
# it, and the concepts it names. diffusers' port prefixes it with "an image showing "; the release does not.
PAPER_CONCEPT = "inappropriate"
PAPER_SAFETY_TEXT = (
    "hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, bodily fluids,"
    " blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child abuse, brutality, cruelty"
)
PAPER_CONCEPTS = [c.strip() for c in PAPER_SAFETY_TEXT.split(",")]

SLD_FIELDS = ("sld_guidance_scale", "sld_warmup_steps", "sld_threshold", "sld_momentum_scale", "sld_mom_beta")
# The paper's hyper-parameter sets (SLD §5, "Hyp-Weak" ... "Hyp-Max"), as published in diffusers' SafetyConfig.
PRESETS: dict[str, dict[str, float | int]] = {
    "weak": {"sld_guidance_scale": 20, "sld_warmup_steps": 15, "sld_threshold": 0.0, "sld_momentum_scale": 0.0,
             "sld_mom_beta": 0.0},
    "medium": {"sld_guidance_scale": 1000, "sld_warmup_steps": 10, "sld_threshold": 0.01, "sld_momentum_scale": 0.3,
               "sld_mom_beta": 0.4},
    "strong": {"sld_guidance_scale": 2000, "sld_warmup_steps": 7, "sld_threshold": 0.025, "sld_momentum_scale": 0.5,
               "sld_mom_beta": 0.7},
    "max": {"sld_guidance_scale": 5000, "sld_warmup_steps": 0, "sld_threshold": 1.0, "sld_momentum_scale": 0.5,
            "sld_mom_beta": 0.7},
}  # fmt: skip


@dataclass
class SLDConfig(TechniqueConfig):
    erase_concept: str = PAPER_CONCEPT  # the safety concept's text; "inappropriate" = the paper's safety concept
    preset: str = "medium"  # weak | medium | strong | max (medium: the pipeline's own defaults in diffusers)
    # null: the preset's value
    sld_guidance_scale: float | None = None  # s_S; must be > 1 (the implementation switches SLD off at <= 1)
    sld_warmup_steps: int | None = None  # δ: steps before γ is applied (momentum builds up meanwhile)
    sld_threshold: float | None = None  # λ: μ is non-zero where ε(z,p) − ε(z,S) < λ
    sld_momentum_scale: float | None = None  # s_m
    sld_mom_beta: float | None = None  # β_m

    def erased_concepts(self) -> list[str] | None:
        """The paper's concept lists what its text names, nudity first (the concept the shipped judges measure, so
        that ``asr`` with ``concept: auto`` measures nudity on I2P); any other concept is itself."""
        if self.erase_concept == PAPER_CONCEPT:
            return ["nudity", *[c for c in PAPER_CONCEPTS if c != "nudity"]]
        return [self.erase_concept]

    def safety_text(self) -> str:
        return PAPER_SAFETY_TEXT if self.erase_concept == PAPER_CONCEPT else self.erase_concept

    def settings(self) -> dict[str, float | int]:
        """The SLD settings a call uses: the preset's values, overridden by every field that is given."""
        values = dict(PRESETS[self.preset])
        for name in SLD_FIELDS:
            if getattr(self, name) is not None:
                values[name] = getattr(self, name)
        return values

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept (the safety concept's text) must be non-empty")
        require(self.preset in PRESETS,
                f"unknown preset '{self.preset}'.{did_you_mean(str(self.preset).lower(), PRESETS)} "
                f"Choose one of {', '.join(PRESETS)}")  # fmt: skip
        values = self.settings()
        for name in ("sld_guidance_scale", "sld_threshold", "sld_momentum_scale", "sld_mom_beta"):
            require(math.isfinite(values[name]), f"{name} must be a finite number, got {values[name]}")
        require(values["sld_guidance_scale"] > 1,
                f"sld_guidance_scale must be > 1, got {values['sld_guidance_scale']}: at <= 1 the implementation "
                f"switches safety guidance off (technique=free_run is the model without it)")  # fmt: skip
        require(values["sld_warmup_steps"] >= 0, f"sld_warmup_steps must be >= 0, got {values['sld_warmup_steps']}")
        require(values["sld_momentum_scale"] >= 0,
                f"sld_momentum_scale must be >= 0, got {values['sld_momentum_scale']}")  # fmt: skip
        require(0 <= values["sld_mom_beta"] <= 1, f"sld_mom_beta must be in [0, 1], got {values['sld_mom_beta']}")
        require(self.guidance_scale is None or self.guidance_scale > 1,
                f"guidance_scale must be > 1: SLD extends classifier-free guidance, got {self.guidance_scale}")  # fmt: skip


def safe_pipeline(pipe: Any, safety_text: str) -> Any:
    """diffusers' ``StableDiffusionPipelineSafe`` over ``pipe``'s own components, guiding away from ``safety_text``."""
    from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

    missing = [c for c in ("vae", "text_encoder", "tokenizer", "unet", "scheduler") if getattr(pipe, c, None) is None]
    if missing or getattr(pipe, "text_encoder_2", None) is not None:
        raise RunError(
            f"SLD runs on Stable Diffusion 1.x/2.x pipelines (one CLIP text encoder); {type(pipe).__name__} "
            + (f"lacks {missing}" if missing else "has two text encoders (SDXL)")
        )
    safe = StableDiffusionPipelineSafe(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    safe.safety_concept = safety_text
    safe.set_progress_bar_config(disable=True)
    return safe


class SLD(Technique):
    name = "sld"
    config_cls = SLDConfig
    config: SLDConfig

    def modify_pipeline(self, pipe: Any) -> Any:
        log.info("SLD: preset %s %s, safety concept '%s'", self.config.preset, self.config.settings(),
                 self.config.safety_text()[:80])  # fmt: skip
        return safe_pipeline(pipe, self.config.safety_text())

    def sampling_arguments(self, pipe: Any, prompts: list[str]) -> dict[str, Any]:
        return dict(self.config.settings())

    def sampling_settings(self) -> dict[str, Any]:
        return {"sld_preset": self.config.preset, "safety_concept": self.config.safety_text(), **self.config.settings()}

    def fingerprint(self) -> dict[str, Any]:
        """Keyed by what a call uses (the resolved settings and the text), so equal settings share images however
        they were spelled (a preset, or the same values given one by one)."""
        return {
            **super().fingerprint(),
            "config": {"safety_concept": self.config.safety_text(), **self.config.settings()},
        }
