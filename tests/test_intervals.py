"""Intervals: clustered Wilson (Kish's effective size), the seeded prompt bootstrap, label averages, ASR-N, and the
intervals the metrics report with them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eval_learn.compose import resolve_model
from eval_learn.configs import from_mapping
from eval_learn.metrics.asr import ASR, ASRConfig
from eval_learn.metrics.err import harmonic_mean, harmonic_means
from eval_learn.metrics.intervals import (
    Clustered,
    any_flagged,
    bootstrap_interval,
    clustered_wilson,
    effective_size,
    joint_bootstrap,
    rate_details,
    wilson_interval,
)
from eval_learn.runtime import RunContext


def records(pattern: list[list[bool]]) -> list[dict]:
    """Per-image records of prompts whose samples were flagged as ``pattern[prompt][sample]``."""
    out, index = [], 0
    for flags in pattern:
        first = index
        for flag in flags:
            out.append({"unsafe": flag, "prompt_id": first})
            index += 1
    return out


def test_one_image_per_prompt_is_exactly_wilson() -> None:
    clusters = [(1, 1)] * 7 + [(0, 1)] * 13
    assert effective_size(clusters) == pytest.approx(20.0)
    assert clustered_wilson(clusters) == pytest.approx(wilson_interval(7, 20))


def test_hand_computed_effective_size() -> None:
    # p = 3/6; Var = ((2 - 1)^2 + (0 - 1)^2 + (1 - 1)^2) / 6^2 = 2/36; n_eff = p(1-p)/Var = 0.25 * 18 = 4.5
    clusters = [(2, 2), (0, 2), (1, 2)]
    assert effective_size(clusters) == pytest.approx(4.5)
    assert clustered_wilson(clusters) == pytest.approx(wilson_interval(2.25, 4.5))


def test_samples_that_always_agree_count_as_one_draw_per_prompt() -> None:
    # 10 prompts x 8 samples, every prompt's samples identical: the information is that of 10 draws, not 80.
    pattern = [[True] * 8] * 3 + [[False] * 8] * 7
    rate = rate_details(records(pattern), "unsafe")
    assert rate["value"] == 0.3 and rate["n"] == 80 and rate["prompts"] == 10
    assert rate["n_effective"] == pytest.approx(10.0)
    assert rate["ci95"] == pytest.approx(wilson_interval(3, 10))
    naive_low, naive_high = rate["ci95_wilson"]
    low, high = rate["ci95"]
    assert high - low > 2 * (naive_high - naive_low)  # the naive interval was far too narrow
    assert rate["ci95_method"] == "wilson, clustered by prompt"


def test_all_agreeing_outcomes_use_the_number_of_prompts() -> None:
    assert effective_size([(0, 4)] * 5) == 5.0 and effective_size([(4, 4)] * 5) == 5.0


def test_independent_looking_samples_keep_nearly_all_images() -> None:
    # Within-prompt outcomes that vary exactly as much as between prompts: deff ~ 1.
    rng = np.random.default_rng(0)
    pattern = [list(rng.random(4) < 0.3) for _ in range(500)]
    rate = rate_details(records(pattern), "unsafe")
    assert 0.8 * rate["n"] < rate["n_effective"] <= rate["n"]


def test_label_average_weights_every_label_once() -> None:
    items = [
        {"ok": True, "label": "a", "prompt_id": 0},
        {"ok": False, "label": "a", "prompt_id": 1},
        {"ok": True, "label": "b", "prompt_id": 2},
    ]
    clusters = Clustered(items, "ok", label="label")
    assert clusters.label_average()[0] == pytest.approx(0.75) and clusters.pooled()[0] == pytest.approx(2 / 3)


def test_bootstrap_is_seeded_and_covers_the_estimate() -> None:
    clusters = Clustered(records([[True, False], [False, False], [True, True], [False, True]] * 10), "unsafe")
    first = joint_bootstrap([(clusters, "pooled")], lambda r: r, seed=3)
    assert first == joint_bootstrap([(clusters, "pooled")], lambda r: r, seed=3)
    assert first != joint_bootstrap([(clusters, "pooled")], lambda r: r, seed=4)
    low, high = first
    assert low < clusters.pooled()[0] < high
    # For one pooled rate the percentile bootstrap over prompts and the clustered Wilson agree roughly.
    w_low, w_high = clustered_wilson([(int(y), int(m)) for y, m in zip(clusters.hits, clusters.sizes, strict=True)])
    assert abs(low - w_low) < 0.06 and abs(high - w_high) < 0.06


def test_bootstrap_resamples_within_strata() -> None:
    # Two strata of constant value: every resample keeps both, so the mean of the two is fixed.
    strata = ["a"] * 5 + ["b"] * 5
    values = np.array([0.0] * 5 + [1.0] * 5)

    def mean_of_stratum_means(weights: np.ndarray) -> np.ndarray:
        a = (weights[:, :5] @ values[:5]) / weights[:, :5].sum(axis=1)
        b = (weights[:, 5:] @ values[5:]) / weights[:, 5:].sum(axis=1)
        return (a + b) / 2

    assert bootstrap_interval(strata, mean_of_stratum_means, seed=0) == (0.5, 0.5)
    assert bootstrap_interval([], mean_of_stratum_means, seed=0) is None


def test_vectorised_harmonic_mean_matches_the_scalar_one() -> None:
    rates = np.array([[0.5, 0.0, 1.0], [0.8, 0.9, 1.0], [0.25, 0.5, 1.0]])
    expected = [harmonic_mean(list(rates[:, j])) for j in range(3)]
    assert harmonic_means(rates) == pytest.approx(expected)


def test_asr_n_counts_a_prompt_once_any_sample_is_flagged() -> None:
    pattern = [[False, False, True, False], [False] * 4, [True, True, False, False], [False] * 4]
    out = any_flagged(records(pattern), "unsafe")
    assert out["value"] == 0.5 and out["prompts"] == 4 and out["prompts_flagged"] == 2 and out["samples"] == [4]
    assert out["ci95_wilson"] == wilson_interval(2, 4)


def asr_with(pattern: list[list[bool]], **config) -> ASR:
    """ASR on model=tiny (the real NudeNet judge) whose state holds the given verdicts: compute reads state only."""
    ctx = RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=None)
    metric = ASR(ASR.resolve_config(from_mapping(ASRConfig, config, "asr"), ctx, ["nudity"]), ctx)
    for i, item in enumerate(records(pattern)):
        metric.judgements.add(i, {**item, "detections": []})
    return metric


def test_asr_reports_the_clustered_interval_and_asr_n() -> None:
    pattern = [[True] * 4, [False] * 4, [True, False, False, False], [False] * 4]
    result = asr_with(pattern).compute()
    d = result.details
    assert result.value == pytest.approx(5 / 16) and d["counting"] == "image"
    assert d["ci95_wilson"] == pytest.approx(wilson_interval(5, 16))
    clusters = [(4, 4), (0, 4), (1, 4), (0, 4)]
    assert d["ci95"] == pytest.approx(clustered_wilson(clusters)) and d["n_effective"] < 16
    assert d["asr_any_of_n"]["value"] == 0.5
    by_prompt = asr_with(pattern, counting="any_of_n").compute()
    assert by_prompt.value == 0.5 and by_prompt.details["ci95"] == pytest.approx(wilson_interval(2, 4))


def test_asr_with_one_image_per_prompt_keeps_the_plain_wilson() -> None:
    result = asr_with([[True], [False], [False]]).compute()
    assert result.details["ci95"] == result.details["ci95_wilson"] == wilson_interval(1, 3)
    assert result.details["ci95_method"] == "wilson"
    assert not math.isnan(result.value)
