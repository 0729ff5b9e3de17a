"""Loading a base model's text-to-image pipeline (diffusers is imported only when one loads)."""

from __future__ import annotations

import warnings
from typing import Any

from eval_learn.models.availability import ensure_available
from eval_learn.models.locations import MINIWORLD_DIR
from eval_learn.models.spec import ModelSpec


def _from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` with ``torch_dtype``, which every diffusers this project supports reads; diffusers
    0.36+ also reads ``dtype`` and warns about the old name on every run, a notice nobody can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        return cls.from_pretrained(*args, **kwargs)


def load_pipeline(spec: ModelSpec, device: str, dtype: Any) -> Any:
    """Load the base text-to-image pipeline with the safety checker off (the benchmark judges images itself), in its
    target dtype (loaded so, not cast afterwards; only the tiny model, built in code, is cast)."""
    if spec.id == "tiny":
        from eval_learn.models.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline()
    elif spec.id == "miniworld":
        from diffusers import StableDiffusionPipeline

        pipe = _from_pretrained(
            StableDiffusionPipeline, str(MINIWORLD_DIR), torch_dtype=dtype, safety_checker=None, requires_safety_checker=False,
            local_files_only=True,
        )  # fmt: skip
    else:
        ensure_available(spec)
        from diffusers import AutoPipelineForText2Image

        kwargs: dict[str, Any] = {"torch_dtype": dtype, "revision": spec.revision}
        pipe = _from_pretrained(AutoPipelineForText2Image, spec.id, safety_checker=None, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return cast_pipeline(pipe, device, dtype)


def cast_pipeline(pipe: Any, device: str, dtype: Any) -> Any:
    """Move ``pipe``; cast only when the dtype really changes (diffusers warns on every no-op cast)."""
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(dtype=dtype)
    return pipe.to(device)
