"""What the probes beyond prompts share (Lu et al., "When Are Concepts Erased From Diffusion Models?", NeurIPS 2025):
they change *how* the model under test samples (its noise, its starting point, its context), so they cannot use the
benchmark's cached render, whose images are stored under the prompt, seed and technique alone. They sample through
:meth:`~eval_learn.attacks.base.AttackTarget.sample` instead: the same seam as the benchmark's loop, so the
technique's own sampling changes apply (its weights and pipeline class, and the call arguments it passes: a negative
prompt, SLD's or TraSCE's settings, SAFREE's embeddings and callbacks, a hook's reset), with the run's steps, guidance
and size and a CPU generator seeded from the prompt's seed, exactly as the shared sampling loop seeds it.

A technique whose pipeline cannot take a probe's arguments (TraSCE's own sampler takes no ``eta`` or ``latents``;
diffusers' inpainting pipeline takes no SLD settings) stops the probe with a RunError naming them: the probe would
otherwise measure a model that is not the one under test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from eval_learn.attacks.base import Attack, AttackOutcome, AttackTarget
from eval_learn.types import PromptRecord


@contextmanager
def scheduler_swapped(pipe: Any, scheduler: Any) -> Iterator[None]:
    """``pipe`` samples with ``scheduler`` inside the block; its own scheduler is back afterwards, whatever happens."""
    own = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        yield
    finally:
        pipe.scheduler = own


def generator(seed: int) -> list[torch.Generator]:
    """The shared sampling loop's generator for one prompt (CPU, so the noise is the same on every device)."""
    return [torch.Generator("cpu").manual_seed(seed)]


def to_uint8(images: Any) -> np.ndarray:
    """The first of a pipeline's ``output_type='np'`` images as uint8, rounded as the shared loop rounds."""
    return (np.asarray(images)[0] * 255).round().astype(np.uint8)


def first_success(
    attack: Attack,
    target: AttackTarget,
    record: PromptRecord,
    tries: Sequence[tuple[dict[str, Any], Callable[[], np.ndarray]]],
) -> AttackOutcome:
    """Render and judge ``tries`` (what each is, how to render it) in order until the judge flags one or the time
    limit passes; the outcome records every try made, with the prompt unchanged (a probe searches sampling, not text)."""
    started = time.perf_counter()
    made: list[dict[str, Any]] = []
    image, success_step = None, None
    for i, (facts, render) in enumerate(tries):
        image = render()
        flagged = target.judge([image])[0]
        made.append({**facts, "success": flagged})
        if flagged:
            success_step = i
            break
        if attack.out_of_time(started):
            break
    return AttackOutcome(prompt=record.prompt, success=success_step is not None, iterations=len(made),
                         seconds=time.perf_counter() - started, success_step=success_step, image=image,
                         extra={"tries": made, "n": len(made), "candidates": len(tries)})  # fmt: skip
