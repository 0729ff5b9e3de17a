"""What a newcomer trips on (issue 18): silent no-ops, messages in the wrong place, discoverability."""

from __future__ import annotations

import logging

import pytest

from eval_learn.datasets.base import build_dataset
from eval_learn.datasets.miniworld import MiniWorldPrompts, MiniWorldPromptsConfig


@pytest.mark.parametrize(("limit", "warnings"), [(16, 1), (8, 1), (4, 0), (None, 0)])
def test_a_limit_that_keeps_every_prompt_says_so_once(caplog: pytest.LogCaptureFixture, limit, warnings) -> None:
    prompt_set = MiniWorldPrompts(MiniWorldPromptsConfig(concept="red"))  # 8 prompts
    with caplog.at_level(logging.WARNING):
        dataset = build_dataset(prompt_set, limit=limit, samples=8, base_seed=0)
    said = [r.getMessage() for r in caplog.records if "limit" in r.getMessage()]
    assert len(said) == warnings, said
    assert dataset.metadata["prompts"] == (8 if limit is None or limit >= 8 else limit)
    if warnings:
        assert f"limit {limit} keeps all 8 prompts of 'miniworld'" in said[0]
