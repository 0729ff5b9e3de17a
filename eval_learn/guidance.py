"""The guidance scale, one place for both of its rules: which value an image gets (the prompt's own, else the
technique's, else the base model's) and which values are allowed (finite, >= 0; a technique may ask for more)."""

from __future__ import annotations

import math

from eval_learn.configs import require


def check_guidance_scale(value: float | None, what: str = "guidance_scale") -> None:
    """``None`` (not set) passes: a less specific source fills it in."""
    require(value is None or math.isfinite(value) and value >= 0, f"{what} must be a finite number >= 0, got {value}")


def effective_guidance_scale(*sources: float | None) -> float:
    """The first source that is set, most specific first (prompt, technique, model)."""
    for value in sources:
        if value is not None:
            return float(value)
    raise ValueError("no guidance scale is set: the base model's default is always set")
