"""Batched text-to-image generation with one seed per prompt.

Every prompt gets its own ``torch.Generator`` seeded from its record, created on the CPU so that the initial noise
is the same on every device; with a deterministic sampler (DDIM, PNDM, ...) an image therefore depends only on its
prompt, seed and settings, not on which batch it landed in. Prompts that carry their own guidance scale (I2P's
``sd_guidance_scale``) are grouped so that each pipeline call has one scale.

Batched matrix products round differently for different batch shapes, so a batched image can differ from the same
image rendered alone by one grey level in a few pixels. With ``batch_invariant`` (the default) each prompt is run
through the pipeline on its own and images are bit-identical whatever the batch size; turn it off on a GPU for
throughput when last-bit equality across batch sizes does not matter.
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
    batch_invariant: bool = True,
    **pipe_kwargs: Any,
) -> list[Image]:
    """Render ``records`` in order; a record's own ``guidance_scale`` wins over the default."""
    groups: dict[float, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        scale = record.guidance_scale if record.guidance_scale is not None else guidance_scale
        groups[float(scale)].append(i)
    images: list[Image | None] = [None] * len(records)
    calls = (
        [(scale, [i]) for scale, positions in groups.items() for i in positions]
        if batch_invariant
        else list(groups.items())
    )
    for scale, positions in calls:
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
