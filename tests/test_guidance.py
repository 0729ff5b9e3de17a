"""The guidance scale's two rules live in one place: which value an image gets, and which values are allowed."""

from __future__ import annotations

import math

import pytest

from eval_learn.datasets.tables import parse_guidance
from eval_learn.engine.requests import request_for
from eval_learn.errors import ConfigError
from eval_learn.guidance import check_guidance_scale, effective_guidance_scale
from eval_learn.models import ModelSpec
from eval_learn.types import PromptRecord

SETTINGS = {"guidance_scale": 7.5, "num_inference_steps": 2, "height": 8, "width": 8}


def test_the_prompts_own_scale_wins_then_the_techniques_then_the_models() -> None:
    assert effective_guidance_scale(3.0, 5.0, 7.5) == 3.0
    assert effective_guidance_scale(None, 5.0, 7.5) == 5.0
    assert effective_guidance_scale(None, None, 7.5) == 7.5
    assert effective_guidance_scale(0.0, 5.0) == 0.0  # 0 is a scale (no guidance), not "unset"
    assert request_for(PromptRecord(0, "a", 1, guidance_scale=2.0), SETTINGS).guidance_scale == 2.0
    assert request_for(PromptRecord(0, "a", 1), SETTINGS).guidance_scale == 7.5


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_every_source_refuses_the_same_values(bad) -> None:
    with pytest.raises(ConfigError, match="must be a finite number >= 0"):
        check_guidance_scale(bad)
    with pytest.raises(ConfigError, match="guidance_scale must be a finite number >= 0"):
        ModelSpec(name="m", id="x", guidance_scale=bad).validate()
    with pytest.raises(ConfigError, match="row 3: guidance scale must be a finite number >= 0"):
        parse_guidance(str(bad), "row 3")
    check_guidance_scale(None)
