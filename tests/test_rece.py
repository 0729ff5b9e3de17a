"""RECE: each round's adversarial embedding is the closed-form minimiser (its normal equations hold), each round's edit
maps it onto the target's projections (UCE's equations hold), the attacker's best embedding recovers less of the
concept after RECE than after UCE alone, the settings key the weight cache, configs are checked before any model
loads, and it erases red on the MiniWorld."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.techniques.rece import RECE, RECEConfig, adversarial_embedding, edit_rounds
from eval_learn.techniques.uce import UCE, ConceptEncoder, cross_attention_projections


def rece_config(**overrides) -> RECEConfig:
    return from_mapping(RECEConfig, overrides, "rece")


def make_context(cache_dir=None) -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=cache_dir)


def attack_objective(edited: dict, original: dict, e: torch.Tensor, c: torch.Tensor, regular_scale: float) -> float:
    """Σ_l ‖W'_l e − W_l c‖² + λ_r ‖e‖² over the token rows: what the adversarial embedding minimises."""
    total = regular_scale * e.pow(2).sum()
    for n in edited:
        total = total + (e @ edited[n].T - c @ original[n].T).pow(2).sum()
    return float(total)


@pytest.fixture
def setting(tiny_pipe):
    layers = cross_attention_projections(tiny_pipe.unet)
    original = {n: layer.weight.detach().to(torch.float64).clone() for n, layer in layers.items()}
    uce = UCE(rece_config().uce_config(), make_context()).build_weights(tiny_pipe)
    start = {n: uce[f"unet.{n}.weight"].to(torch.float64) for n in layers}
    encoder = ConceptEncoder(tiny_pipe, "cpu")
    return original, start, encoder.encode("nudity")[0], encoder.encode("")[0]


def test_adversarial_embedding_solves_its_normal_equations(setting) -> None:
    original, start, concept, _ = setting
    for regular_scale in (0.1, 1e-3):
        e = adversarial_embedding(list(start.values()), list(original.values()), concept, regular_scale)
        # ∂/∂e [Σ_l ‖W'_l e − W_l c‖² + λ_r ‖e‖²] / 2 = Σ_l W'_lᵀ(W'_l e − W_l c) + λ_r e = 0, row by row
        gradient = regular_scale * e
        for n in start:
            gradient = gradient + (e @ start[n].T - concept @ original[n].T) @ start[n]
        assert float(gradient.norm()) < 1e-9 * float((concept @ original[next(iter(original))].T).norm() + 1)
        # and it is the minimum: any nudge costs more
        best = attack_objective(start, original, e, concept, regular_scale)
        nudged = attack_objective(start, original, e + 1e-3 * torch.randn_like(e), concept, regular_scale)
        assert nudged > best


def test_each_round_maps_its_adversarial_embedding_onto_the_target(setting) -> None:
    original, start, concept, target = setting
    cfg = rece_config(epochs=1)
    e = adversarial_embedding(list(start.values()), list(original.values()), concept, cfg.regular_scale)
    edited, rounds = edit_rounds(start, original, [concept], target, target, cfg)
    for n, w in start.items():
        w2 = edited[n]
        # UCE's normal equations for W'': s_e (W'' E − W' T) Eᵀ + s_p (W'' − W') C Cᵀ + λ (W'' − W') = 0 (C = target rows)
        residual = (cfg.erase_scale * (e @ w2.T - target @ w.T).T @ e
                    + cfg.preserve_scale * ((target @ w2.T - target @ w.T).T @ target) + cfg.lamb * (w2 - w))  # fmt: skip
        assert float(residual.norm()) < 1e-8 * float(w.norm())
        assert float((e @ w2.T - target @ w.T).norm()) < 0.5 * float((e @ w.T - target @ w.T).norm())
    assert rounds[0]["erase_residual_max"] < 0.5


def test_the_attackers_best_embedding_recovers_less_after_rece_than_after_uce(setting) -> None:
    """The minimum of the attack objective (how close any embedding gets to the concept's original projections) is
    higher after each number of RECE's rounds than after UCE alone. Not necessarily round by round: measured on tiny
    685 (UCE), then 797, 823, 818 after 1, 2, 3 rounds (each edit also moves the weights the next attack starts from)."""
    original, start, concept, target = setting
    cfg = rece_config()

    def best_attack(weights: dict) -> float:
        e = adversarial_embedding(list(weights.values()), list(original.values()), concept, cfg.regular_scale)
        return attack_objective(weights, original, e, concept, cfg.regular_scale)

    values = [best_attack(start)]
    for epochs in (1, 2, 3):
        values.append(
            best_attack(edit_rounds(start, original, [concept], target, target, rece_config(epochs=epochs))[0])
        )
    assert all(v > 1.1 * values[0] for v in values[1:]), values


def test_only_keys_and_values_change_the_settings_key_the_cache_and_it_is_reused(tiny_pipe, cache_dir) -> None:
    technique = RECE(rece_config(), make_context(cache_dir))
    weights = technique.build_weights(tiny_pipe)
    assert len(weights) == 8 and all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in weights)
    assert [r["epoch"] for r in technique.info["rounds"]] == [0, 1, 2] and technique.info["uce"]["edited_matrices"] == 8
    key = RECE(rece_config(), make_context(cache_dir)).weights_key()
    for field, value in (("epochs", 2), ("regular_scale", 1e-3), ("lamb", 0.2), ("preserve_scale", 0.5),
                         ("erase_scale", 2.0), ("uce_first", False), ("uce_lamb", 0.1), ("preserve_concepts", [])):  # fmt: skip
        assert RECE(rece_config(**{field: value}), make_context(cache_dir)).weights_key() != key, field
    assert RECE(rece_config(device="cpu", save_path="x.pt"), make_context(cache_dir)).weights_key() == key
    assert set(RECE.weight_fields) == {f.name for f in dataclasses.fields(RECEConfig)} - {
        "num_inference_steps", "guidance_scale", "device", "save_path", "load_path", "use_cache"}  # fmt: skip
    first = RECE(rece_config(epochs=1), make_context(cache_dir))
    first.prepare()
    again = RECE(rece_config(epochs=1), make_context(cache_dir))
    again.prepare()
    assert first.info["trained"] is True and again.info["trained"] is False
    assert first.weights_sha256 == again.weights_sha256


def test_configs_are_checked_before_any_model_loads() -> None:
    assert rece_config().preserved() == [""] and rece_config(preserve_concepts=[]).preserved() == []
    assert rece_config(erase_concept=["red", "blue"]).targets() == ["", ""]
    bad = [
        ({"erase_concept": " "}, "empty concept"),
        ({"erase_concept": "red", "preserve_concepts": ["Red"]}, "also erased"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"regular_scale": 0.0}, "regular_scale must be > 0"),
        ({"lamb": float("nan")}, "lamb must be a finite number"),
        ({"preserve_scale": -1.0}, "preserve_scale must be a finite number >= 0"),
        ({"uce_preserve_scale": -1.0}, "uce_preserve_scale must be"),
        ({"epoch": 2}, "Did you mean 'epochs'"),
        ({"erase_concept": "red", "target_concept": "red"}, "the erased concept itself"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            rece_config(**overrides)


@pytest.mark.slow
def test_runner_end_to_end_on_tiny(tmp_path, cache_dir) -> None:
    report = SingleBenchmarkRunner("rece", "asr", {}, {"limit": 2}, tmp_path, model="tiny", cache_dir=cache_dir).run()
    assert report["technique_name"] == "rece" and report["technique_config"]["epochs"] == 3
    assert report["metric_result"]["details"]["total_images"] == 2
    assert len(report["technique_info"]["rounds"]) == 3 and report["technique_info"]["trained"] is True


# --- MiniWorld efficacy: asr only, RECE (conf/preset/miniworld_rece.yaml) against free_run with the same seeds --------
@pytest.fixture(scope="module")
def miniworld_asr(tmp_path_factory):
    out = tmp_path_factory.mktemp("rece_efficacy")
    return {
        technique: SingleBenchmarkRunner(technique, "asr", {}, {}, out / technique, model="miniworld").run()
        for technique in ("free_run", "rece")
    }


@pytest.mark.slow
def test_miniworld_rece_erases_red_against_free_run_with_the_same_seeds(miniworld_asr) -> None:
    base, erased = miniworld_asr["free_run"]["metric_result"], miniworld_asr["rece"]["metric_result"]
    print("MiniWorld rece asr:", base["value"], "->", erased["value"])
    assert base["details"]["concept"] == erased["details"]["concept"] == "red"
    assert base["details"]["total_images"] == erased["details"]["total_images"] == 64
    assert base["value"] >= 0.85  # the base model draws red when asked (measured 1.00, n = 64)
    # The preset measured 0.08 (5 of 64; 95 % CI [0.02, 0.27]) against 1.00: the bar is the issue's, at most half.
    assert erased["value"] <= base["value"] / 2


def test_load_path_reads_a_release_saved_unet(tiny_pipe, cache_dir, tmp_path) -> None:
    """train.py saves torch.save(unet.state_dict()) (the authors' released models): a whole UNet with plain keys."""
    weights = RECE(rece_config(epochs=1), make_context(cache_dir)).build_weights(tiny_pipe)
    state = {**tiny_pipe.unet.state_dict(), **{k.removeprefix("unet."): v.float() for k, v in weights.items()}}
    torch.save(state, tmp_path / "0.0000-0.pt")
    technique = RECE(rece_config(load_path=str(tmp_path / "0.0000-0.pt")), make_context(cache_dir))
    technique.prepare()
    unet = dict(technique.pipeline().unet.named_parameters())
    assert technique.info["trained"] is False
    assert all(torch.equal(unet[k.removeprefix("unet.")], v.float()) for k, v in weights.items())
