"""SAeUron: the SAE learns to reconstruct the block's activations, the release's score picks the concept's features,
the hook's output is the release's "ablated reconstruction plus error", nothing selected renders exactly like
free_run, only the named block is hooked, the weights are cached, and bad settings fail before any model loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_cli

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.engine.requests import GenerationRequest
from eval_learn.engine.sampling import GenerationMode, render
from eval_learn.runtime import RunContext
from eval_learn.techniques.free_run import FreeRun
from eval_learn.techniques.sae_training import TopKSAE, collect_activations, train_sae
from eval_learn.techniques.saeuron import SAeUron, SAeUronConfig, SAeUronHook, select_features

BLOCK = "up_blocks.1.attentions.1"
STEPS = 6
FAST = {"hookpoint": BLOCK, "expansion_factor": 2, "k": 4, "train_steps": 15, "train_batch_size": 256,
        "other_concepts": ["a dog"], "prompt_templates": ["a photo of {}"], "erase_concept": "a red car",
        "num_inference_steps": STEPS, "guidance_scale": None}  # fmt: skip


def saeuron(cache_dir, **overrides) -> SAeUron:
    config = from_mapping(SAeUronConfig, {**FAST, **overrides}, "saeuron")
    return SAeUron(config, RunContext(resolve_model("tiny"), "cpu", torch.float32, 0, cache_dir))


def test_reconstruction_loss_goes_down_on_tiny_activations(tiny_pipe) -> None:
    block = tiny_pipe.unet.get_submodule(BLOCK)
    acts = collect_activations(tiny_pipe, block, ["a photo of a red car", "a dog"], steps=4, guidance_scale=5.0,
                               height=64, width=64, seed=0)  # fmt: skip
    assert acts.shape[:2] == (2, 4) and acts.shape[-1] == block.proj_out.out_channels
    rows = acts.reshape(-1, acts.shape[-1])
    sae, losses = train_sae(rows, expansion_factor=4, k=8, steps=60, batch_size=512, learning_rate=4e-4, seed=0)
    assert np.mean(losses[-5:]) < 0.8 * losses[0]  # 0.71 -> 0.52 measured at the release lr
    norms = sae.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # decoder rows stay at unit norm
    assert int((sae.encode(rows) != 0).sum(-1).max()) <= 8  # k active latents per patch at sampling time


def test_score_selects_the_features_the_concept_uses_more_than_the_others() -> None:
    concept = torch.tensor([[5.0, 1.0, 1.0, 1.0, 0.0, 2.0]])  # one step, six features
    others = torch.tensor([[1.0, 1.0, 1.0, 1.0, 4.0, 2.0]])
    stats = {"concept_mean": concept, "others_mean": others, "all_concepts_mean": (concept + others) / 2}
    assert select_features(stats, 80.0)[0].tolist() == [0]  # the share 0.5 vs 0.1: far above the 80th percentile
    assert select_features(stats, 100.0)[0].numel() == 0  # nothing exceeds the maximum


@pytest.mark.parametrize("error_term, sign", [("exact", 1.0), ("release", -1.0)])
def test_hook_output_is_the_ablated_reconstruction_plus_the_error(error_term, sign) -> None:
    torch.manual_seed(0)
    sae = TopKSAE(8, 32, 4)
    stats = {"concept_mean": torch.rand(1, 32) + torch.eye(32)[3] * 5, "others_mean": torch.rand(1, 32),
             "all_concepts_mean": torch.rand(1, 32) * 0.1}  # fmt: skip
    hook = SAeUronHook(sae, stats, 90.0, -3.0, error_term)
    features = hook.features[0]
    assert 3 in features.tolist()
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():  # as in every sampling call
        out = hook(None, (), (x,))[0]
    # the release's formula, written out: encode, scale the selected latents above their all-concept mean, decode,
    # add the reconstruction error back (the release adds recon − input: utils/hooks.py)
    rows = x.permute(0, 2, 3, 1).reshape(-1, 8)
    latents = sae.encode(rows)
    sel = latents[:, features]
    scaled = torch.where(sel > stats["all_concepts_mean"][0, features], sel * stats["concept_mean"][0, features] * -3.0,
                         sel)  # fmt: skip
    ablated = latents.clone()
    ablated[:, features] = scaled
    expected = sae.decode(ablated) + sign * (rows - sae.decode(latents))
    expected = expected.reshape(2, 4, 4, 8).permute(0, 3, 1, 2)
    assert not torch.allclose(out, x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_nothing_selected_renders_bit_identical_to_free_run(cache_dir) -> None:
    requests = [GenerationRequest("a photo of a red car", 4, 5.0, STEPS, 64, 64)]
    mode = GenerationMode("fixed_shape", 1)
    technique = saeuron(cache_dir, percentile=100.0, error_term="exact")
    technique.prepare()
    plain = render(FreeRun(FreeRun.config_cls(), technique.context), requests, mode)[0]
    assert np.array_equal(render(technique, requests, mode)[0], plain)
    assert technique.info["selected_features_per_step"] == [0] * STEPS
    scaled = saeuron(cache_dir, percentile=50.0, multiplier=-20.0, error_term="exact")
    scaled.prepare()
    assert scaled.info["trained"] is False  # same SAE settings: read from the cache, not retrained
    assert not np.array_equal(render(scaled, requests, mode)[0], plain)
    released = saeuron(cache_dir, percentile=100.0)  # the release's error term moves the output even then
    released.prepare()
    assert not np.array_equal(render(released, requests, mode)[0], plain)


def test_only_the_named_block_is_hooked(cache_dir) -> None:
    technique = saeuron(cache_dir, percentile=50.0)
    technique.prepare()
    pipe = technique.pipeline()
    hooked = [name for name, m in pipe.unet.named_modules() if m._forward_hooks]
    assert hooked == [BLOCK]
    assert not any(m._forward_hooks for m in (*pipe.text_encoder.modules(), *pipe.vae.modules()))
    assert all(torch.isfinite(p).all() for p in pipe.unet.parameters())


def test_weights_round_trip_through_load_path(cache_dir, tmp_path) -> None:
    saved = tmp_path / "saeuron.safetensors"
    first = saeuron(cache_dir, save_path=str(saved))
    first.prepare()
    loaded = saeuron(cache_dir, load_path=str(saved))
    loaded.prepare()
    assert loaded.weights_sha256 == first.weights_sha256 and loaded.info["trained"] is False


@pytest.mark.parametrize(
    "overrides, message",
    [({"percentile": 101}, "percentile"), ({"k": 0}, "k must be"), ({"other_concepts": []}, "other_concepts"),
     ({"prompt_templates": ["no slot"]}, "prompt_templates"), ({"other_concepts": ["a red car"]}, "erase_concept"),
     ({"error_term": "paper"}, "error_term")],
)  # fmt: skip
def test_bad_settings_are_config_errors(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping(SAeUronConfig, {**FAST, **overrides}, "saeuron").validate()


def test_load_path_reads_a_published_sae_in_the_release_layout(cache_dir, tmp_path) -> None:
    """The release's layout: <hookpoint>/sae.safetensors (encoder.weight, encoder.bias, W_dec, b_dec) + cfg.json."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    folder = tmp_path / BLOCK
    folder.mkdir()
    save_file(TopKSAE(32, 64, 4).tensors(), str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text('{"expansion_factor": 2, "k": 3, "d_in": 32}')
    technique = saeuron(cache_dir, load_path=str(folder / "sae.safetensors"), percentile=90.0)
    technique.prepare()
    assert technique.info["sae_k"] == 3 and technique.info["trained"] is False
    technique.pipeline()
    assert technique.sae.k == 3 and technique.stats["concept_mean"].shape == (STEPS, 64)


@pytest.mark.slow
def test_default_recipe_runs_on_tiny_from_the_command_line(tmp_path) -> None:
    out = tmp_path / "out"
    proc = run_cli("model=tiny", "technique=saeuron", "metric=asr", "metric.config.limit=2",
                   f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("*/report.json")
    text = path.read_text()
    assert "selected_features_per_step" in text and "up_blocks.1.attentions.1" in text  # the tiny preset's block


def test_a_differentiable_call_sees_the_block_as_trained_and_keeps_the_step_count() -> None:
    """An attack's loss (gradients on) passes through the hook unchanged and does not use up a sampling step."""
    torch.manual_seed(0)
    sae = TopKSAE(8, 32, 4)
    stats = {"concept_mean": torch.rand(1, 32) + torch.eye(32)[3] * 5, "others_mean": torch.rand(1, 32),
             "all_concepts_mean": torch.rand(1, 32) * 0.1}  # fmt: skip
    hook = SAeUronHook(sae, stats, 90.0, -3.0, "exact")
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = hook(None, (), (x * 2,))[0]
    assert torch.equal(out, x * 2) and hook.step == 0
    out.sum().backward()  # the gradient reaches the input: the graph is intact
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
    with torch.no_grad():
        assert not torch.allclose(hook(None, (), (x,))[0], x)
    assert hook.step == 1
