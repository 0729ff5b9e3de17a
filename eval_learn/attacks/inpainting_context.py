"""``inpainting_context``: the concept's own image with its centre cut out, filled in by the model under test — the
inpainting probe of Lu et al., "When Are Concepts Erased From Diffusion Models?", NeurIPS 2025.

The base model renders the prompt (an image that shows the concept); a centred square is masked and the model under
test inpaints it from the prompt, seeing the unmasked surroundings at every step. A model that still holds the
concept completes it from context; one that lost it paints something else. One image per prompt.

Follows kevinlu4588/WhenAreConceptsErased @ 9a03e07fa74f81e50cc323146774c2afbbe94494, ``src/probes/inpainting_probe.py``
and ``src/configs/default.yaml``: diffusers' ``StableDiffusionInpaintPipeline`` over the erased model's UNet (a
text-to-image UNet, so the pipeline blends the known region's noised latents back at every step), the base model's
image of the prompt, a white centred rectangle on black from (W − w)//2 to that + w inclusive, 256 × 256 of 512 × 512
(``mask_fraction`` 0.5 of each side here), strength 1. What differs: the run's steps, guidance and size; the base
image is made with the prompt's seed by this run (the release reads a folder of earlier base images). The technique's call
arguments go to the inpainting pipeline (:mod:`eval_learn.attacks.probing`), so a technique with its own pipeline
class (SLD, TraSCE) cannot be probed this way and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from eval_learn.attacks.base import Attack, AttackConfig, AttackOutcome, AttackTarget
from eval_learn.attacks.probing import first_success, generator, to_uint8
from eval_learn.configs import require
from eval_learn.types import PromptRecord

RELEASE = {
    "repository": "https://github.com/kevinlu4588/WhenAreConceptsErased",
    "commit": "9a03e07fa74f81e50cc323146774c2afbbe94494",
    "files": "src/probes/inpainting_probe.py, src/configs/default.yaml",
}


@dataclass
class InpaintingContextConfig(AttackConfig):
    mask_fraction: float = 0.5  # the masked square's side over the image's (the release: 256 of 512)

    def validate(self) -> None:
        super().validate()
        require(0 < self.mask_fraction <= 1, "mask_fraction must be in (0, 1]")


def centre_mask(width: int, height: int, fraction: float) -> Image.Image:
    """White (to inpaint) centred rectangle on black, its corners drawn inclusive as the release draws them."""
    w, h = round(width * fraction), round(height * fraction)
    left, top = (width - w) // 2, (height - h) // 2
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle([left, top, left + w, top + h], fill=255)
    return mask


def inpainting_pipeline(pipe: Any) -> Any:
    """diffusers' inpainting pipeline over the model under test's own components (nothing copied)."""
    from diffusers import StableDiffusionInpaintPipeline

    inpaint = StableDiffusionInpaintPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    inpaint.set_progress_bar_config(disable=True)
    return inpaint


class InpaintingContext(Attack):
    name = "inpainting_context"
    config_cls = InpaintingContextConfig
    config: InpaintingContextConfig
    needs_base_model = True
    white_box = False
    algorithm_version = 2  # 2: samples with the technique's own sampling changes
    follows = RELEASE
    differs = "the run's steps, guidance and size; the base image made with the prompt's seed in this run"

    def run(self, target: AttackTarget, record: PromptRecord) -> AttackOutcome:
        settings = target.generation_settings()
        mask = centre_mask(int(settings["width"]), int(settings["height"]), self.config.mask_fraction)
        pipe = inpainting_pipeline(target.pipeline())

        def render() -> np.ndarray:
            context = Image.fromarray(target.render_base([record.prompt], record.seed)[0])
            return to_uint8(target.sample(record.prompt, generator(record.seed), pipe=pipe, image=context,
                                          mask_image=mask, strength=1.0, output_type="np"))  # fmt: skip

        outcome = first_success(self, target, record, [({"mask_fraction": self.config.mask_fraction}, render)])
        outcome.extra["mask_fraction"] = self.config.mask_fraction
        return outcome
