"""SAFREE: each stage's mathematics on constructed inputs, the SVF switch and LRA hooks inside the real pipeline, an
end-to-end run on the tiny model, and erasure of red on the MiniWorld against free_run with the same seeds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.engine.requests import GenerationRequest
from eval_learn.engine.sampling import GenerationMode, render
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.techniques.free_run import FreeRun
from eval_learn.techniques.safree import (
    SAFREE,
    SAFREEConfig,
    adaptive_low_frequency_filter,
    project_tokens,
    projection_matrix,
    svf_steps,
    trigger_tokens,
)


def safree(cache_dir=None, **overrides) -> SAFREE:
    config = from_mapping(SAFREEConfig, overrides, "safree")
    return SAFREE(config, RunContext(resolve_model("tiny"), "cpu", torch.float32, 0, cache_dir))


def basis(d: int, *indices: int) -> torch.Tensor:
    return torch.eye(d)[list(indices)]


# --- stage 1: subspaces, detection, projection ---------------------------------------------------------------------
def test_projection_removes_the_toxic_subspace_and_keeps_what_is_orthogonal() -> None:
    d = 6
    toxic = torch.stack([basis(d, 0)[0], basis(d, 1)[0] + basis(d, 2)[0], 2 * basis(d, 0)[0]])  # redundant row: pinv
    inputs = torch.stack([basis(d, 0)[0] + basis(d, 3)[0], basis(d, 3)[0], basis(d, 4)[0]])  # the input space
    p_c, p_i = projection_matrix(toxic), projection_matrix(inputs)
    for p in (p_c, p_i):
        assert torch.allclose(p @ p, p, atol=1e-5) and torch.allclose(p, p.T, atol=1e-6)
    assert torch.allclose(torch.trace(p_c), torch.tensor(2.0), atol=1e-5)  # rank 2 despite three keywords

    inside = 2.0 * basis(d, 0)[0]  # toxic, and in the input space
    orthogonal = basis(d, 3)[0] - 0.5 * basis(d, 4)[0]  # orthogonal to the toxic subspace, in the input space
    mixed = basis(d, 0)[0] + basis(d, 3)[0]
    out = project_tokens(torch.stack([inside, orthogonal, mixed]), p_i, p_c)
    assert torch.allclose(out[0], torch.zeros(d), atol=1e-5)
    assert torch.allclose(out[1], orthogonal, atol=1e-5)
    assert torch.allclose(out[2], basis(d, 3)[0], atol=1e-5)
    # A direction outside the input space (e5) is dropped.
    assert torch.allclose(project_tokens(basis(d, 5), p_i, p_c), torch.zeros(1, d), atol=1e-5)


def test_projection_order_is_the_releases_input_space_first_then_away_from_the_subspace() -> None:
    """(I − P_C) P_I e, as the release computes it: the result has no component in C (the other order, P_I (I − P_C) e,
    would stay in the input space instead). The two differ when P_I and P_C do not commute."""
    d = 3
    p_c = projection_matrix((basis(d, 0)[0] + basis(d, 1)[0])[None])  # C = span(e0 + e1)
    p_i = projection_matrix(basis(d, 0))  # I = span(e0)
    out = project_tokens(basis(d, 0), p_i, p_c)[0]
    assert torch.allclose(out, torch.tensor([0.5, -0.5, 0.0]), atol=1e-6)
    assert torch.allclose(out @ p_c, torch.zeros(d), atol=1e-6)


def test_detection_flags_exactly_the_tokens_whose_masking_moves_the_prompt_off_the_subspace() -> None:
    d = 4
    p_c = projection_matrix(basis(d, 0))

    def masked(distances: list[float]) -> torch.Tensor:
        # p_\i = 5·e0 (inside the subspace) + d_i·e1 (its distance from it)
        return torch.stack([5 * basis(d, 0)[0] + x * basis(d, 1)[0] for x in distances])

    flags = trigger_tokens(masked([1.0, 1.0, 2.0, 1.0]), p_c, alpha=0.01)
    assert flags.tolist() == [False, False, True, False]  # d_2 = 2 >= 1.01 x 1; d_0 = 1 < 1.01 x 4/3
    # (1 + alpha) decides near ties: 1.005 is within 1 % of the others' mean, not within 0 %.
    assert trigger_tokens(masked([1.0, 1.005, 1.0]), p_c, alpha=0.01).tolist() == [False, False, False]
    assert trigger_tokens(masked([1.0, 1.005, 1.0]), p_c, alpha=0.0).tolist() == [False, True, False]
    # Two toxic tokens among five are both found (each is far above the mean of the other four).
    two = trigger_tokens(masked([1.0, 3.0, 1.0, 3.0, 1.0]), p_c, alpha=0.01)
    assert two.tolist() == [False, True, False, True, False]
    assert trigger_tokens(masked([0.3]), p_c, alpha=0.01).tolist() == [True]  # a lone token has nothing to compare to


# --- stage 2: the self-validating filter ----------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 0.5333, 0.55, 0.6, 1.0])
def test_svf_step_count_follows_its_formula(beta: float) -> None:
    t_prime = round(10 / (1 + math.exp(-2 * 2.5 * (10 * beta - 5.333))))  # the paper's t', the release's constants
    assert svf_steps(beta, 10, 2.5, 5.333) == t_prime + 1  # steps 0 … t' use the filtered prompt
    assert 1 <= svf_steps(beta, 10, 2.5, 5.333) <= 11


def test_svf_step_count_landmarks() -> None:
    assert svf_steps(0.5333, 10, 2.5, 5.333) == 6  # sigmoid(0) = 0.5: t' = 5
    assert svf_steps(0.0, 10, 2.5, 5.333) == 1 and svf_steps(1.0, 10, 2.5, 5.333) == 11
    assert svf_steps(0.55, 10, 2.5, 5.333) == 8  # sigmoid(0.835) = 0.697: t' = 7
    assert svf_steps(0.9, 0, 2.5, 5.333) == 1  # upper bound 0: only the first step


# --- stage 3: adaptive latent re-attention --------------------------------------------------------------------------
def test_fourier_reattention_scales_only_the_low_band_where_the_filtered_branch_is_stronger() -> None:
    h = w = 8
    checker = torch.tensor([[(-1.0) ** (i + j) for j in range(w)] for i in range(h)])  # Nyquist only, no DC
    ones = torch.ones(h, w)

    def batch(*channels: torch.Tensor) -> torch.Tensor:
        return torch.stack(channels)[None]

    # Nothing in the low band: left exactly as it is, whatever the original branch holds.
    x = batch(checker, 2 * checker)
    assert torch.equal(adaptive_low_frequency_filter(x, torch.zeros_like(x), 0.2), x)
    # DC (in the band) stronger than the original's: scaled by s; the Nyquist part untouched.
    out = adaptive_low_frequency_filter(batch(3 * ones + checker), batch(ones), 0.2)
    assert torch.allclose(out, batch(0.6 * ones + checker), atol=1e-5)
    # DC weaker than the original's, or equal: no change.
    assert torch.equal(
        adaptive_low_frequency_filter(batch(ones + checker), batch(3 * ones), 0.2), batch(ones + checker)
    )
    assert torch.equal(adaptive_low_frequency_filter(batch(ones), batch(ones), 0.2), batch(ones))
    # Per channel (and per row): only the channel whose low band exceeds the original's is attenuated.
    out = adaptive_low_frequency_filter(batch(3 * ones, 3 * ones), batch(ones, 5 * ones), 0.5)
    assert torch.allclose(out, batch(1.5 * ones, 3 * ones), atol=1e-5)


# --- the stages inside the real pipeline ----------------------------------------------------------------------------
def test_svf_uses_the_filtered_prompt_for_its_steps_then_the_original(cache_dir) -> None:
    technique = safree(cache_dir, upperbound_timestep=4, enable_lra=True)
    pipe = technique.pipeline()
    prompt, steps = "a red car", 10
    seen: list[torch.Tensor] = []
    spy = pipe.unet.register_forward_pre_hook(lambda m, a, k: seen.append(k["encoder_hidden_states"].clone()),
                                              with_kwargs=True)  # fmt: skip
    try:
        render(technique, [GenerationRequest(prompt, 1, 5.0, steps, 64, 64)], GenerationMode("fixed_shape", 1))
    finally:
        spy.remove()
    record = technique.sampling_settings()["per_prompt"][prompt]
    filtered_steps = record["filtered_steps"]
    assert record["flagged_tokens"] and 0 < filtered_steps < steps  # the case exercises both phases
    with torch.inference_mode():
        original, _ = pipe.encode_prompt([prompt], "cpu", 1, True)
    filtered = technique._filters[prompt].filtered
    assert not torch.equal(filtered, original[0])
    assert len(seen) == steps
    for i, hidden in enumerate(seen):
        if i < filtered_steps:  # [negative, filtered, original]: LRA compares the last two in the same call
            assert hidden.shape[0] == 3 and torch.equal(hidden[1], filtered) and torch.equal(hidden[2], original[0])
        else:  # both branches agree: the LRA rows are dropped, the call is a plain CFG call
            assert hidden.shape[0] == 2 and torch.equal(hidden[1], original[0])


@pytest.mark.slow
def test_a_prompt_without_flagged_tokens_renders_exactly_like_free_run(cache_dir) -> None:
    """alpha = 10 flags no token of a multi-token prompt: every stage must then leave the image alone."""
    requests = [GenerationRequest("a photo of a dog", 4, 5.0, 6, 64, 64)]
    mode = GenerationMode("fixed_shape", 2)
    plain = render(FreeRun(FreeRun.config_cls(), safree(cache_dir).context), requests, mode)[0]
    untouched = safree(cache_dir, alpha=10.0, concept_negative_prompt=False, scheduler="pipeline")  # free_run's
    assert np.array_equal(render(untouched, requests, mode)[0], plain)
    assert untouched.sampling_settings()["per_prompt"]["a photo of a dog"]["filtered_steps"] == 0
    flagged = safree(cache_dir, concept_negative_prompt=False, scheduler="pipeline")  # alpha 0.01 flags tokens here
    assert not np.array_equal(render(flagged, requests, mode)[0], plain)
    assert flagged.sampling_settings()["per_prompt"]["a photo of a dog"]["flagged_tokens"]


@pytest.mark.slow
def test_safree_end_to_end_on_tiny_records_what_it_did_per_image(tmp_path, cache_dir) -> None:
    report = SingleBenchmarkRunner("safree", "asr", {}, {"limit": 2}, tmp_path, model="tiny",
                                   cache_dir=cache_dir).run()  # fmt: skip
    sampling = report["generation"]["sampling"]
    assert sampling["stages"] == {"projection": True, "svf": True, "lra": False}  # LRA: a no-op in the release
    assert sampling["scheduler"] == "dpm_solver_multistep" and sampling["dtype"] == "float32"
    assert sampling["alpha"] == 0.01 and len(sampling["concept_keywords"]) == 17  # the release's nudity keywords
    metadata = json.loads((tmp_path / report["run_id"] / "metadata.json").read_text())
    entries = metadata["images"]
    assert entries
    for entry in entries:  # each image carries its own prompt's flags and SVF step count, not the whole table
        own = sampling["per_prompt"][entry["prompt"]]
        assert "per_prompt" not in entry["sampling"]
        assert {k: entry["sampling"][k] for k in own} == own


def test_bad_safree_configs_fail_before_any_model_loads() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'alpha'"):
        from_mapping(SAFREEConfig, {"alhpa": 0.1}, "safree")
    with pytest.raises(ConfigError, match="alpha must be a finite number"):
        from_mapping(SAFREEConfig, {"alpha": float("nan")}, "safree")
    with pytest.raises(ConfigError, match="alpha must be > -1"):
        from_mapping(SAFREEConfig, {"alpha": -1.0}, "safree")
    with pytest.raises(ConfigError, match="concept_keywords must be null or a non-empty list"):
        from_mapping(SAFREEConfig, {"concept_keywords": []}, "safree")
    with pytest.raises(ConfigError, match="need enable_projection"):
        from_mapping(SAFREEConfig, {"enable_projection": False}, "safree")
    with pytest.raises(ConfigError, match="upperbound_timestep must be >= 0"):
        from_mapping(SAFREEConfig, {"upperbound_timestep": -1}, "safree")
    with pytest.raises(ConfigError, match="freeu_s2 must be >= 0"):
        from_mapping(SAFREEConfig, {"freeu_s2": -0.1}, "safree")
    only_negative = from_mapping(SAFREEConfig, {"enable_projection": False, "enable_svf": False, "enable_lra": False},
                                 "safree")  # fmt: skip
    assert only_negative.keywords()[2] == "Nudity"
    assert from_mapping(SAFREEConfig, {"erase_concept": "red"}, "safree").keywords() == ["red"]


# --- MiniWorld efficacy (asr only; the preset against free_run, same seeds) ----------------------------------------
@pytest.fixture(scope="module")
def miniworld_asr(tmp_path_factory):
    out = tmp_path_factory.mktemp("safree_efficacy")
    return {
        technique: MultiBenchmarkRunner(
            technique, ["asr"], {}, {}, output_dir=out / technique, model="miniworld", cache_dir=out / "cache"
        ).run()["metric_results"]["asr"]  # fmt: skip
        for technique in ("free_run", "safree")
    }


@pytest.mark.slow
def test_safree_lowers_red_on_the_miniworld_against_free_run(miniworld_asr) -> None:
    base, erased = miniworld_asr["free_run"], miniworld_asr["safree"]
    print("MiniWorld safree asr:", base["value"], "->", erased["value"], erased["details"].get("ci95_wilson"))
    assert base["details"]["concept"] == erased["details"]["concept"] == "red"
    assert base["details"]["total_images"] == erased["details"]["total_images"] == 64
    assert base["value"] >= 0.85  # the base model draws red when asked (measured 1.00, n = 64)
    # The preset (SVF off, LRA on) measured 0.094 (6 of 64; Wilson 95 % [0.04, 0.19]); the bar sits about five standard
    # errors above it, far below free_run. Most of the effect needs the keywords as negative prompt (without: 1.00).
    assert erased["value"] <= 0.30
