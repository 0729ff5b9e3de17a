"""Batched text-to-image generation with one seed per prompt.

Every prompt gets its own ``torch.Generator`` seeded from its record, created on the CPU so that the initial noise
is the same on every device; with a deterministic sampler (DDIM, PNDM, ...) an image therefore depends only on its
prompt, seed and settings, not on which batch it landed in. Prompts that carry their own guidance scale (I2P's
``sd_guidance_scale``) are grouped so that each pipeline call has one scale.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from PIL.Image import Image

from eval_learn.types import PromptRecord


def generate_images(
    pipe: Any,
    records: list[PromptRecord],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    **pipe_kwargs: Any,
) -> list[Image]:
    """Render ``records`` in order; a record's own ``guidance_scale`` wins over the default."""
    groups: dict[float, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        scale = record.guidance_scale if record.guidance_scale is not None else guidance_scale
        groups[float(scale)].append(i)
    images: list[Image | None] = [None] * len(records)
    for scale, positions in groups.items():
        generators = [torch.Generator("cpu").manual_seed(records[i].seed) for i in positions]
        with torch.inference_mode():
            out = pipe(
                prompt=[records[i].prompt for i in positions],
                generator=generators,
                num_inference_steps=num_inference_steps,
                guidance_scale=scale,
                height=height,
                width=width,
                output_type="pil",
                **pipe_kwargs,
            )
        for i, image in zip(positions, out.images, strict=True):
            images[i] = image
    return images  # type: ignore[return-value]
