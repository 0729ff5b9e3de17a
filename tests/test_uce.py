"""UCE: the edit is the regularised least-squares solution its paper derives, its residuals follow from λ and the
scales as that solution says, only cross-attention keys and values change, and it erases red on the MiniWorld."""

from __future__ import annotations

import pytest
import torch

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.techniques.uce import UCE, ConceptEncoder, UCEConfig, closed_form_edit, cross_attention_projections


def uce_config(**overrides) -> UCEConfig:
    return from_mapping(UCEConfig, overrides, "uce")


def make_context(cache_dir) -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=cache_dir)


def rows(encoder: ConceptEncoder, texts: list[str]) -> torch.Tensor:
    return torch.cat([encoder.rows(t, "last") for t in texts])


@pytest.fixture
def layer_and_encoder(tiny_pipe):
    """A real cross-attention value matrix of the tiny UNet and the tiny text encoder's token embeddings."""
    name, layer = next((n, m) for n, m in cross_attention_projections(tiny_pipe.unet).items() if n.endswith("to_v"))
    return layer.weight.detach().to(torch.float64), ConceptEncoder(tiny_pipe, "cpu")


def least_squares(w, ce, ve, cp, se, sp, lamb) -> torch.Tensor:
    """The same objective solved independently: min ‖A X − B‖ over X = W'ᵀ with the three terms stacked as rows."""
    eye = torch.eye(w.shape[1], dtype=torch.float64)
    a = torch.cat([se**0.5 * ce, sp**0.5 * cp, lamb**0.5 * eye])
    b = torch.cat([se**0.5 * ve, sp**0.5 * cp @ w.T, lamb**0.5 * w.T])
    return torch.linalg.lstsq(a, b).solution.T


@pytest.mark.parametrize(("se", "sp", "lamb"), [(1.0, 0.1, 0.5), (3.0, 1.0, 0.05), (1.0, 0.0, 2.0)])
def test_edit_is_the_regularised_least_squares_minimiser(layer_and_encoder, se, sp, lamb) -> None:
    w, encoder = layer_and_encoder
    ce = torch.cat([encoder.pair("red", "", "last_to_end")[0], encoder.pair("dog", "cat", "last_to_end")[0]])
    ct = torch.cat([encoder.pair("red", "", "last_to_end")[1], encoder.pair("dog", "cat", "last_to_end")[1]])
    cp = torch.cat([encoder.rows(t, "all") for t in ("", "car", "tree")])
    edited = closed_form_edit(w, ce, ct @ w.T, cp, se, sp, lamb)
    expected = least_squares(w, ce, ct @ w.T, cp, se, sp, lamb)
    assert torch.allclose(edited, expected, rtol=0, atol=1e-9 * expected.abs().max())


def test_residuals_are_lambda_times_the_resolvent_of_the_constraints(layer_and_encoder) -> None:
    """With C the constrained embeddings (erased, then preserved), S their scales, K = C Cᵀ and R₀ = C Wᵀ − V the
    rows' misfit before the edit (zero for preserved rows), the normal equations give R* = C W*ᵀ − V = λ(λI + K S)⁻¹ R₀
    exactly. So one erased token keeps the fraction λ / (λ + s_e‖c‖²) of its misfit, and with equal scales s every
    residual, erased or preserved, is at most λ / (λ + s κ_min(K)) · ‖R₀‖ (Frobenius)."""
    w, encoder = layer_and_encoder
    ce, ct = rows(encoder, ["red", "dog"]), rows(encoder, ["", "cat"])
    cp = rows(encoder, ["car", "tree", "blue"])
    c, v = torch.cat([ce, cp]), torch.cat([ct @ w.T, cp @ w.T])
    misfit = c @ w.T - v
    for se, sp, lamb in [(1.0, 0.1, 0.5), (2.0, 1.0, 0.05), (1.0, 1.0, 5.0)]:
        edited = closed_form_edit(w, ce, ct @ w.T, cp, se, sp, lamb)
        scales = torch.tensor([se] * len(ce) + [sp] * len(cp), dtype=torch.float64)
        predicted = lamb * torch.linalg.solve(lamb * torch.eye(len(c), dtype=torch.float64) + c @ c.T * scales, misfit)
        assert torch.allclose(c @ edited.T - v, predicted, atol=1e-9 * misfit.abs().max())

    # One erased token alone: the kept fraction is exactly λ / (λ + s_e ‖c‖²).
    c1, t1 = rows(encoder, ["red"]), rows(encoder, [""])
    for se, lamb in [(1.0, 0.5), (4.0, 0.5), (1.0, 0.01)]:
        edited = closed_form_edit(w, c1, t1 @ w.T, c1[:0], se, 0.0, lamb)
        kept = (c1 @ edited.T - t1 @ w.T).norm() / (c1 @ w.T - t1 @ w.T).norm()
        assert kept.item() == pytest.approx(lamb / (lamb + se * c1.norm().item() ** 2), rel=1e-9)

    # Equal scales: the λ-bound holds for every row, and shrinking λ (or raising the scale) shrinks the residuals.
    kappa = torch.linalg.eigvalsh(c @ c.T).min().item()
    assert kappa > 0  # five token embeddings in 32 dimensions: linearly independent
    previous = float("inf")
    for lamb in (1.0, 0.1, 0.01, 1e-4):
        edited = closed_form_edit(w, ce, ct @ w.T, cp, 1.0, 1.0, lamb)
        residual = (c @ edited.T - v).norm().item()
        assert residual <= lamb / (lamb + kappa) * misfit.norm().item() * (1 + 1e-9)
        assert residual < previous
        previous = residual
    assert previous < 1e-3 * misfit.norm().item()  # λ → 0: erased rows reach W c_target, preserved rows stay
    weak, strong = (closed_form_edit(w, ce, ct @ w.T, cp, s, 1.0, 0.5) for s in (1.0, 10.0))
    assert (ce @ strong.T - ct @ w.T).norm() < (ce @ weak.T - ct @ w.T).norm()


def test_token_selection_follows_the_release(tiny_pipe) -> None:
    encoder = ConceptEncoder(tiny_pipe, "cpu")
    red, i = encoder.encode("red")
    empty, j = encoder.encode("")
    assert (i, j) == (1, 0)  # "red" sits after begin-of-text; the empty prompt's last token is begin-of-text
    concept, target = encoder.pair("red", "", "last_to_end")
    assert torch.equal(concept, red[1:]) and torch.equal(target, empty[:-1])  # paired from the last tokens on
    gogh, k = encoder.encode("van gogh")
    concept, target = encoder.pair("van gogh", "", "last_to_end")
    assert k == 2 and torch.equal(concept, gogh[2:]) and torch.equal(target, empty[: len(empty) - 2])
    concept, target = encoder.pair("van gogh", "art", "last")
    assert torch.equal(concept, gogh[2:3]) and len(target) == 1
    assert torch.equal(encoder.rows("car", "all"), encoder.encode("car")[0])


def test_only_cross_attention_keys_and_values_change_and_the_edit_is_cached(tiny_pipe, cache_dir) -> None:
    cfg = uce_config(erase_concept=["red", "dog"], target_concept=["", "cat"], preserve_concepts=["", "car"])
    technique = UCE(cfg, make_context(cache_dir))
    technique.prepare()
    expected = {f"unet.{n}.weight" for n in cross_attention_projections(tiny_pipe.unet)}
    assert set(technique.weights) == expected and len(expected) == 8  # 4 cross-attentions × (to_k, to_v)
    assert all(".attn2.to_k." in k or ".attn2.to_v." in k for k in expected)
    edited = technique.pipeline()
    base = dict(tiny_pipe.unet.named_parameters())
    changed = {f"unet.{n}" for n, p in edited.unet.named_parameters() if not torch.equal(p, base[n])}
    assert changed == expected
    assert all(
        torch.equal(p, q)
        for p, q in zip(edited.text_encoder.parameters(), tiny_pipe.text_encoder.parameters(), strict=True)
    )
    assert technique.info["trained"] is True and technique.info["erase_residual_max"] < 1

    again = UCE(cfg, make_context(cache_dir))
    again.prepare()
    assert again.info["trained"] is False and again.weights_sha256 == technique.weights_sha256
    other = UCE(uce_config(erase_concept=["red", "dog"], target_concept=["", "cat"], lamb=0.1), make_context(cache_dir))
    assert other.weights_key() != again.weights_key()


def test_edit_satisfies_its_equations_per_layer(tiny_pipe, cache_dir) -> None:
    """The technique's own weights: W* c_i ≈ W c_target and W* c_j ≈ W c_j within the λ-bound of each layer."""
    cfg = uce_config(erase_concept="red", preserve_concepts=["car", "tree"], erase_tokens="last",
                     preserve_tokens="last", erase_scale=1.0, preserve_scale=1.0, lamb=0.05)  # fmt: skip
    weights = UCE(cfg, make_context(cache_dir)).build_weights(tiny_pipe)
    encoder = ConceptEncoder(tiny_pipe, "cpu")
    ce, ct, cp = rows(encoder, ["red"]), rows(encoder, [""]), rows(encoder, ["car", "tree"])
    c = torch.cat([ce, cp])
    kappa = torch.linalg.eigvalsh(c @ c.T).min().item()
    for name, layer in cross_attention_projections(tiny_pipe.unet).items():
        w = layer.weight.detach().to(torch.float64)
        w_star = weights[f"unet.{name}.weight"].to(torch.float64)
        misfit = (ce @ w.T - ct @ w.T).norm().item()  # preserved rows start with no misfit
        bound = 0.05 / (0.05 + kappa) * misfit + 1e-5 * w.abs().max().item()  # + float32 rounding of W*
        assert (ce @ w_star.T - ct @ w.T).norm().item() <= bound
        assert (cp @ w_star.T - cp @ w.T).norm().item() <= bound
        assert (ce @ w_star.T - ct @ w.T).norm().item() < 0.2 * misfit


@pytest.mark.slow
def test_runner_end_to_end_on_tiny(tmp_path, cache_dir) -> None:
    report = SingleBenchmarkRunner("uce", "asr", {}, {"limit": 2}, tmp_path, model="tiny", cache_dir=cache_dir).run()
    assert report["technique_name"] == "uce" and report["technique_config"]["erase_concept"] == "nudity"
    assert report["metric_result"]["details"]["total_images"] == 2
    assert report["technique_info"]["edited_matrices"] == 8 and report["technique_info"]["trained"] is True


def test_configs_are_checked_before_any_model_loads() -> None:
    assert uce_config(erase_concept=["red", "blue"]).erased_concepts() == ["red", "blue"]
    assert uce_config(erase_concept="red").erased_concepts() == ["red"]
    assert uce_config(erase_concept=["a", "b"], target_concept="x").targets() == ["x", "x"]
    assert uce_config().preserved() == [""] and uce_config(preserve_concepts=[]).preserved() == []
    bad = [
        ({"erase_concept": " "}, "empty concept"),
        ({"erase_concept": []}, "at least one concept"),
        ({"erase_concept": ["red", ""]}, "empty concept"),
        ({"erase_concept": ["red", "red"]}, "more than once"),
        ({"erase_concept": ["red", "blue"], "target_concept": ["", "x", "y"]}, "3 entries for 2 erased"),
        ({"erase_concept": "red", "target_concept": "Red"}, "the erased concept itself"),
        ({"erase_concept": "red", "preserve_concepts": ["blue", "red"]}, "also erased"),
        ({"erase_scale": -1.0}, "erase_scale must be a finite number >= 0"),
        ({"erase_scale": 0.0}, "erase_scale must be > 0"),
        ({"preserve_scale": -0.1}, "preserve_scale must be"),
        ({"lamb": float("nan")}, "lamb must be a finite number"),
        ({"lamb": 0.0}, "lamb must be > 0"),
        ({"erase_tokens": "all"}, "not one of"),
        ({"preserve_token": "all"}, "Did you mean 'preserve_tokens'"),
        ({"erase_concept": 3}, "matches none of|expected"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            uce_config(**overrides)


# --- MiniWorld efficacy: asr only, UCE (conf/preset/miniworld_uce.yaml) against free_run with the same seeds ---------
@pytest.fixture(scope="module")
def miniworld_asr(tmp_path_factory):
    out = tmp_path_factory.mktemp("uce_efficacy")
    return {
        technique: SingleBenchmarkRunner(technique, "asr", {}, {}, out / technique, model="miniworld").run()
        for technique in ("free_run", "uce")
    }


@pytest.mark.slow
def test_miniworld_uce_erases_red_against_free_run_with_the_same_seeds(miniworld_asr) -> None:
    base, uce = miniworld_asr["free_run"]["metric_result"], miniworld_asr["uce"]["metric_result"]
    assert base["details"]["concept"] == uce["details"]["concept"] == "red"
    assert base["details"]["total_images"] == uce["details"]["total_images"] == 64
    assert base["value"] >= 0.85  # the base model draws red when asked (measured 1.00, n=64)
    # Measured with the MiniWorld preset: 1.00 -> 0.17 (n=64; Wilson 95% intervals [0.94, 1.00] and [0.10, 0.28]).
    # The bar asks for a drop of at least 0.5, under two-thirds of the measured 0.83: a 50-point fall cannot come
    # from seed noise at n=64, and a numerics change that costs a few images on another CPU still passes.
    assert uce["value"] <= base["value"] - 0.5
