"""Concept Ablation: the target is the stop-gradient anchor prediction, only the chosen parameters move, the loss
falls, the weights cache, and ablating red on the MiniWorld against free_run with the same seeds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eval_learn.configs import ConfigError, from_mapping
from eval_learn.errors import NonFiniteError
from eval_learn.models import resolve_model
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.techniques.ca import CAConfig, CATrainer, ConceptAblation, select_parameters

FAST = {"erase_concept": "red", "anchor_concept": "green", "num_anchor_images": 4, "anchor_steps": 3,
        "train_steps": 3, "batch_size": 2, "prompt_templates": ["a photo of a {} car", "a {} house"]}  # fmt: skip


def ca_config(**overrides) -> CAConfig:
    return from_mapping(CAConfig, {**FAST, **overrides}, "ca")


def trainer(pipe, **overrides) -> CATrainer:
    t = CATrainer(pipe, ca_config(**overrides), "cpu", 64, 64)
    t.make_anchor_images()
    return t


def test_train_method_selects_exactly_its_parameters(tiny_pipe) -> None:
    unet = {f"unet.{n}" for n, _ in tiny_pipe.unet.named_parameters()}
    xattn = set(select_parameters(tiny_pipe, "xattn"))
    assert xattn and xattn == {n for n in unet if ".attn2.to_k." in n or ".attn2.to_v." in n}
    assert set(select_parameters(tiny_pipe, "full")) == unet
    (embedding,) = select_parameters(tiny_pipe, "embedding").values()
    assert embedding is tiny_pipe.text_encoder.get_input_embeddings().weight


def test_anchor_images_come_from_the_pipeline_with_fixed_seeds(tiny_pipe) -> None:
    a, b = trainer(tiny_pipe), trainer(tiny_pipe)
    assert a.latents is not None and b.latents is not None
    assert a.latents.shape[:3] == (2, 4, 2)  # (plain, flipped) x images x (mean, std)
    assert torch.equal(a.latents, b.latents)
    assert not torch.equal(trainer(tiny_pipe, train_seed=1).latents, a.latents)
    assert a.anchor_prompts == ["a photo of a green car", "a green house"]
    assert a.target_prompts == ["a photo of a red car", "a red house"]
    assert a.template_of.tolist() == [0, 1, 0, 1]


def test_target_is_the_anchor_prediction_under_stop_gradient(tiny_pipe) -> None:
    t = trainer(tiny_pipe)
    x_t, steps, templates = t.sample_batch()
    with torch.no_grad():
        anchor = t.unet(
            x_t, steps, encoder_hidden_states=t.encode([t.anchor_prompts[int(i)] for i in templates])
        ).sample
    target = t.target(x_t, steps, templates)
    assert torch.allclose(target, anchor, atol=1e-6) and not target.requires_grad

    def grads(loss: torch.Tensor) -> dict[str, torch.Tensor]:
        for p in t.params.values():
            p.grad = None
        loss.backward()
        return {n: p.grad.clone() for n, p in t.params.items()}

    used = grads(t.loss(x_t, steps, templates))
    target_text = t.encode([t.target_prompts[int(i)] for i in templates])
    anchor_text = t.encode([t.anchor_prompts[int(i)] for i in templates])
    prediction = lambda text: t.unet(x_t, steps, encoder_hidden_states=text).sample  # noqa: E731
    by_formula = grads(F.mse_loss(prediction(target_text), prediction(anchor_text).detach()))
    both_branches = grads(F.mse_loss(prediction(target_text), prediction(anchor_text)))  # what sg rules out
    assert all(torch.allclose(used[n], by_formula[n], atol=1e-7) for n in used)
    assert any(not torch.allclose(used[n], both_branches[n], atol=1e-7) for n in used)


@pytest.mark.parametrize("method", ["xattn", "full", "embedding"])
def test_training_changes_only_the_chosen_parameters(tiny_pipe, method) -> None:
    unet_before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    text_before = {n: p.detach().clone() for n, p in tiny_pipe.text_encoder.named_parameters()}
    vae_before = {n: p.detach().clone() for n, p in tiny_pipe.vae.named_parameters()}
    t = trainer(tiny_pipe, train_method=method, learning_rate=1e-3)
    t.train()
    unet_changed = {f"unet.{n}" for n, p in tiny_pipe.unet.named_parameters() if not torch.equal(p, unet_before[n])}
    text_changed = {n for n, p in tiny_pipe.text_encoder.named_parameters() if not torch.equal(p, text_before[n])}
    assert all(torch.equal(p, vae_before[n]) for n, p in tiny_pipe.vae.named_parameters())
    if method == "embedding":
        (name,) = t.params
        assert not unet_changed and {f"text_encoder.{n}" for n in text_changed} == {name}
        weight = tiny_pipe.text_encoder.get_input_embeddings().weight
        rows = (weight != text_before[name.removeprefix("text_encoder.")]).any(dim=1).nonzero().flatten().tolist()
        assert rows == tiny_pipe.tokenizer("red", add_special_tokens=False).input_ids  # the target's token only
    else:
        assert not text_changed and unet_changed and unet_changed <= set(t.params)
        assert len(unet_changed) == len(t.params)
        if method == "xattn":
            assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in unet_changed)


@pytest.mark.slow
def test_loss_falls_on_held_out_batches(tiny_pipe) -> None:
    t = trainer(tiny_pipe, train_steps=30, learning_rate=1e-3, batch_size=2, num_anchor_images=8)
    held_out = [t.sample_batch() for _ in range(4)]

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(t.loss(*batch).item() for batch in held_out) / len(held_out)

    start = mean_loss()
    losses = t.train()
    end = mean_loss()
    assert len(losses) == 30
    assert end < 0.6 * start, (start, end)  # measured: 0.44 x (the anchor branch moves with θ, so not to zero)


def test_a_diverging_run_stops_with_the_settings_to_blame(tiny_pipe) -> None:
    t = trainer(tiny_pipe, train_steps=20, learning_rate=1e30, max_grad_norm=1e30, train_method="full")
    with pytest.raises(NonFiniteError, match="learning_rate=1e\\+30"):
        t.train()


@pytest.mark.slow
def test_ca_end_to_end_on_tiny_trains_once_then_hits_the_cache(tmp_path, cache_dir) -> None:
    config = {**FAST, "erase_concept": "nudity", "anchor_concept": "a dressed person"}  # asr on tiny: nudity
    first = SingleBenchmarkRunner("ca", "asr", config, {"limit": 2}, tmp_path / "a", model="tiny",
                                  cache_dir=cache_dir).run()  # fmt: skip
    info = first["technique_info"]
    assert info["trained"] is True and len(info["losses"]) == 3 and info["trained_tensors"] > 0
    assert first["technique_config"]["anchor_concept"] == "a dressed person"
    second = SingleBenchmarkRunner("ca", "asr", config, {"limit": 2}, tmp_path / "b", model="tiny",
                                   cache_dir=cache_dir).run()  # fmt: skip
    assert second["technique_info"]["trained"] is False
    assert second["technique_info"]["weights_sha256"] == info["weights_sha256"]
    context = RunContext(resolve_model("tiny"), "cpu", torch.float32, 0, cache_dir)
    assert (
        ConceptAblation(ca_config(), context).weights_key()
        != ConceptAblation(ca_config(anchor_concept="blue"), context).weights_key()
    )


def test_bad_ca_configs_fail_before_any_model_loads() -> None:
    with pytest.raises(ConfigError, match="anchor_concept is required"):
        from_mapping(CAConfig, {"erase_concept": "red"}, "ca")
    with pytest.raises(ConfigError, match="anchor_concept is required"):
        from_mapping(CAConfig, {"erase_concept": "red", "anchor_concept": "  "}, "ca")
    with pytest.raises(ConfigError, match="must differ"):
        ca_config(anchor_concept="red")
    with pytest.raises(ConfigError, match="exactly one"):
        ca_config(prompt_templates=["a photo of a car"])
    with pytest.raises(ConfigError, match="exactly one"):
        ca_config(prompt_templates=["a {} {}"])
    with pytest.raises(ConfigError, match="not one of"):
        ca_config(train_method="attn")
    with pytest.raises(ConfigError, match="learning_rate must be a finite number > 0"):
        ca_config(learning_rate=float("nan"))
    with pytest.raises(ConfigError, match="Did you mean 'anchor_concept'"):
        from_mapping(CAConfig, {"anchor_concpet": "cat"}, "ca")


def test_embedding_training_needs_a_token_the_anchor_does_not_have(tiny_pipe) -> None:
    with pytest.raises(ConfigError, match="every token of erase_concept 'red car' is also in anchor_concept"):
        CATrainer(tiny_pipe, ca_config(train_method="embedding", erase_concept="red car", anchor_concept="a red car"),
                  "cpu", 64, 64)  # fmt: skip


# --- MiniWorld efficacy (asr only; the preset against free_run, same seeds) ----------------------------------------
@pytest.fixture(scope="module")
def miniworld_asr(tmp_path_factory):
    out = tmp_path_factory.mktemp("ca_efficacy")
    reports = {
        technique: MultiBenchmarkRunner(
            technique, ["asr"], {}, {}, output_dir=out / technique, model="miniworld", cache_dir=out / "cache"
        ).run()
        for technique in ("free_run", "ca")
    }
    return reports


@pytest.mark.slow
def test_ca_ablates_red_on_the_miniworld_against_free_run(miniworld_asr) -> None:
    base = miniworld_asr["free_run"]["metric_results"]["asr"]
    erased = miniworld_asr["ca"]["metric_results"]["asr"]
    print("MiniWorld ca asr:", base["value"], "->", erased["value"], erased["details"].get("ci95_wilson"))
    assert base["details"]["concept"] == erased["details"]["concept"] == "red"
    assert base["details"]["total_images"] == erased["details"]["total_images"] == 64
    assert base["value"] >= 0.85  # the base model draws red when asked (measured 1.00, n = 64)
    # The preset (embedding, lr 3e-3, anchor orange) measured 0.00 (0 of 64; Wilson 95 % [0, 0.06]), the same at lr
    # 1e-3 and 1e-2; xattn at lr 1e-4 measured 0.11. The bar allows for other CPUs' numerics, far below free_run.
    assert erased["value"] <= 0.20
    assert miniworld_asr["ca"]["technique_info"]["trained"] is True
