"""The one generation loop every technique samples through: per-prompt seeds, batching, and what is reproducible.

Every request gets its own ``torch.Generator`` seeded from its prompt record, created on the CPU, so the initial
noise is the same on every device. What else an image depends on was measured (on CPUs and on an H200):

- **CPU**: its prompt, seed and settings, and the *shape* of the pipeline call, not its neighbours in the call nor
  its slot. So the default on the CPU, ``fixed_shape``, pads every call to ``rows`` rows (copies of the last
  request): an image is bit-identical whatever it is batched with, at batched speed.
- **CUDA** (SD size): the slot within the call matters as well (rows of a batch of identical copies differ by about
  one grey level). The default there, ``batched``, makes one call per batch without padding: reproducible for the
  same batches, within a grey level otherwise.
- ``strict`` (``batch_invariant=true``) renders one prompt per call: bit-identical on any device whatever the batch
  size, at unbatched speed.

The mode is part of every image's store key. Images come back as uint8 arrays; a NaN or infinite pixel stops the run
(diffusers would silently turn it black).
"""

from __future__ import annotations

import platform
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image

from eval_learn.engine.requests import GenerationRequest, request_for
from eval_learn.errors import NonFiniteError, RunError
from eval_learn.runtime import environment
from eval_learn.types import PromptRecord

if TYPE_CHECKING:
    from eval_learn.techniques.base import Technique


@dataclass(frozen=True)
class GenerationMode:
    name: Literal["fixed_shape", "batched", "strict"]
    rows: int  # prompts per pipeline call (fixed_shape: every call has exactly this many rows)

    @property
    def pad(self) -> bool:
        return self.name == "fixed_shape"

    @classmethod
    def for_device(cls, device: str, batch_size: int, batch_invariant: bool | None) -> GenerationMode:
        """``batch_invariant``: None = the device's fast exact-where-possible default; True = strict; False = one
        unpadded call per batch."""
        if batch_invariant:
            return cls("strict", 1)
        if batch_invariant is None and not device.startswith("cuda"):
            return cls("fixed_shape", batch_size)
        return cls("batched", batch_size)

    def describe(self) -> dict[str, Any]:
        reproducible = {
            "fixed_shape": "bit-identical for the same prompt, seed, settings and rows, whatever the neighbours",
            "batched": "bit-identical for the same batches; within about one grey level otherwise",
            "strict": "bit-identical for the same prompt, seed and settings, whatever the batch size",
        }[self.name]
        return {"mode": self.name, "rows_per_call": self.rows, "reproducible": reproducible}


def image_context(technique: Technique, mode: GenerationMode) -> dict[str, Any]:
    """Everything besides the request that determines an image's pixels (the image store's key context)."""
    device = technique.device
    versions = environment()["versions"]
    return {
        "model": technique.context.model.fingerprint(),
        "technique": technique.fingerprint(),
        "dtype": str(technique.context.dtype),
        "device": device.split(":")[0],
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.machine(),
        "generation": asdict(mode),
        "versions": {k: versions.get(k) for k in ("torch", "diffusers", "transformers")},
    }


def _calls(requests: list[GenerationRequest], mode: GenerationMode) -> list[list[int]]:
    """Positions of ``requests`` per pipeline call: grouped by the settings a call shares, in order, ``rows`` each."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, request in enumerate(requests):
        groups[request.call_group()].append(i)
    return [positions[i : i + mode.rows] for positions in groups.values() for i in range(0, len(positions), mode.rows)]


def sampling_call(
    technique: Technique, pipe: Any, prompts: list[str], prompt_embeds: torch.Tensor | None = None
) -> dict[str, Any]:
    """The text and the technique's own sampling changes of one call of ``pipe`` over ``prompts`` (its negative
    prompt, SLD's or TraSCE's settings, SAFREE's embeddings and callbacks; a hooked technique resets its hooks here):
    the seam every image of the benchmark, and every probe's, goes through. ``prompt_embeds`` ``[rows, tokens, dim]``
    replaces the prompts' text-encoder output."""
    extra = technique.sampling_arguments(pipe, prompts)
    text: dict[str, Any] = {} if "prompt_embeds" in extra else {"prompt": prompts}  # a technique may encode them
    if prompt_embeds is not None:
        if "prompt_embeds" in extra:
            raise RunError(f"technique '{technique.name}' encodes the prompts itself: an attack's text "
                           f"embeddings cannot pass through its sampling changes")  # fmt: skip
        text = {"prompt_embeds": prompt_embeds.to(pipe.device, pipe.unet.dtype)}
    return {**text, **extra}


def render(
    technique: Technique, requests: list[GenerationRequest], mode: GenerationMode,
    prompt_embeds: torch.Tensor | None = None,
) -> list[np.ndarray]:  # fmt: skip
    """Render ``requests`` in order with the technique's pipeline; uint8 [H, W, 3] arrays. ``prompt_embeds``
    (``[len(requests), tokens, dim]``, an attack's continuous input) replaces the requests' prompts as the
    text-encoder output; the technique's other sampling changes still apply."""
    images: list[np.ndarray | None] = [None] * len(requests)
    if not requests:
        return []
    if technique.supplies_images:  # images made elsewhere (technique=external): read, never rendered
        return technique.supplied_images(requests)
    pipe = technique.pipeline()
    for positions in _calls(requests, mode):
        rows = [requests[i] for i in positions]
        embeds = None if prompt_embeds is None else [prompt_embeds[i] for i in positions]
        if mode.pad:
            rows += [rows[-1]] * (mode.rows - len(rows))
            embeds = None if embeds is None else embeds + [embeds[-1]] * (mode.rows - len(embeds))
        first = rows[0]
        prompts = [r.prompt for r in rows]
        with torch.inference_mode():
            out = pipe(
                **sampling_call(technique, pipe, prompts, None if embeds is None else torch.stack(embeds)),
                generator=[torch.Generator("cpu").manual_seed(r.seed) for r in rows],
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                height=first.height,
                width=first.width,
                output_type="np",
            )
        array = np.asarray(out.images)
        if not np.isfinite(array).all():
            bad = [r.prompt for r, a in zip(rows, array, strict=True) if not np.isfinite(a).all()]
            raise NonFiniteError(
                f"technique '{technique.name}' rendered {len(bad)} image(s) with NaN or infinite pixels (e.g. for "
                f"'{bad[0][:80]}'): its weights or sampling settings are broken; nothing was stored or judged."
            )
        pixels = (array * 255).round().astype(np.uint8)  # as diffusers' numpy_to_pil
        for k, i in enumerate(positions):
            images[i] = pixels[k]
    return images  # type: ignore[return-value]


def generate(technique: Technique, records: list[PromptRecord], rows: int | None = None) -> list[Image.Image]:
    """Render ``records`` with ``technique`` through the shared loop, without the image store (figures, quick
    looks): one call of ``rows`` prompts (default: all of them) per group of shared settings."""
    mode = GenerationMode.for_device(technique.device, rows or max(1, len(records)), None)
    requests = [request_for(r, technique.generation_settings()) for r in records]
    return [Image.fromarray(p) for p in render(technique, requests, mode)]
