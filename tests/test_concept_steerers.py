"""Concept Steerers: the k-sparse SAE learns to reconstruct the text encoder's layer output with k latents per row,
only the named text-encoder layer is hooked, the prompt is steered by +s and the negative text by −s (so the prompt
moves away from the concept's direction), strength 0 renders free_run's images exactly, a killed training resumes
to the same SAE, the release's SAE layout loads, and bad settings fail before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval_learn.configs import ConfigError, from_mapping
from eval_learn.engine.requests import GenerationRequest
from eval_learn.engine.sampling import GenerationMode, render
from eval_learn.models import resolve_model
from eval_learn.runtime import RunContext
from eval_learn.techniques.concept_steerers import (
    ConceptSteerers,
    ConceptSteerersConfig,
    layer_outputs,
    steering_vector,
)
from eval_learn.techniques.free_run import FreeRun
from eval_learn.techniques.sae_training import KSparseObjective, train_sae
from tests.conftest import ROOT, run_cli
from tests.test_ssd import kill_then_resume

LAYER = 0
FAST = {"layer": LAYER, "expansion_factor": 2, "k": 4, "auxk": 8, "train_steps": 12, "train_batch_size": 256,
        "train_prompts_csv": None, "train_prompts": ["a photo of a red car", "a dog", "a nude woman", "a church"],
        "erase_concept": "nudity", "steer_text": "naked nude body", "strength": -2.0, "num_inference_steps": 4,
        "guidance_scale": 5.0}  # fmt: skip


def steerers(cache_dir, **overrides) -> ConceptSteerers:
    config = from_mapping(ConceptSteerersConfig, {**FAST, **overrides}, "concept_steerers")
    return ConceptSteerers(config, RunContext(resolve_model("tiny"), "cpu", torch.float32, 0, cache_dir))


def test_reconstruction_loss_falls_and_k_latents_are_active(tiny_pipe) -> None:
    prompts = ["a photo of a red car", "a dog in the sea", "a painting of a church", "a nude woman", "a cat"]
    rows = layer_outputs(tiny_pipe, LAYER, prompts)
    assert rows.shape == (5, 77, tiny_pipe.text_encoder.config.hidden_size)
    rows = rows.reshape(-1, rows.shape[-1])
    objective = KSparseObjective(auxk=16, auxk_coef=1 / 32, dead_steps=1000, adam_eps=6.25e-10)
    sae, losses = train_sae(rows, expansion_factor=4, k=8, steps=60, batch_size=256, learning_rate=4e-4, seed=0,
                            objective=objective)  # fmt: skip
    assert np.mean(losses[-5:]) < 0.7 * losses[0]  # measured 5.5 -> 3.2 at the release lr
    assert int((sae.encode(rows) != 0).sum(-1).max()) <= 8  # k active latents per row
    assert sae.encode(rows).count_nonzero(-1).float().mean() > 4  # and they are used
    norms = sae.W_dec.detach().norm(dim=1)  # put at unit norm before each step, so close to it after the last
    assert torch.allclose(norms, torch.ones_like(norms), atol=0.05)


def test_only_the_named_text_encoder_layer_is_hooked(cache_dir) -> None:
    technique = steerers(cache_dir, layer=1)
    technique.prepare()
    pipe = technique.pipeline()
    hooked = [name for name, m in pipe.text_encoder.named_modules() if m._forward_hooks]
    assert hooked == ["encoder.layers.1"] or hooked == ["text_model.encoder.layers.1"]
    assert not any(m._forward_hooks for m in (*pipe.unet.modules(), *pipe.vae.modules()))


def test_prompt_moves_away_from_the_concept_and_the_negative_towards_it(cache_dir) -> None:
    technique = steerers(cache_dir)
    technique.prepare()
    pipe = technique.pipeline()
    layer = pipe.text_encoder.encoder.layers[LAYER]
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))  # after the steering
    try:
        pipe.encode_prompt(["a nude woman"], "cpu", 1, True, None)
    finally:
        handle.remove()
    assert len(seen) == 2  # the prompt, then the negative (empty) text
    plain_prompt, plain_negative = (layer_outputs(pipe, LAYER, [t])[0] for t in ("a nude woman", ""))
    direction = steering_vector(technique.sae, layer_outputs(pipe, LAYER, [FAST["steer_text"]])[0], 1.0)
    assert direction.norm() > 0
    torch.testing.assert_close(seen[0][0], plain_prompt + FAST["strength"] * direction)
    torch.testing.assert_close(seen[1][0], plain_negative - FAST["strength"] * direction)
    along = (seen[0][0] * direction).sum() - (plain_prompt * direction).sum()
    assert along < 0 and (seen[1][0] * direction).sum() > (plain_negative * direction).sum()
    # outside sampling the text encoder is the plain one (an attack's loss, a metric)
    torch.testing.assert_close(layer_outputs(pipe, LAYER, ["a nude woman"])[0], plain_prompt)
    # an attack's own prompt embeddings skip the text encoder: only the negative text is encoded, and steered by −s
    seen.clear()
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        pipe.encode_prompt(None, "cpu", 1, True, None, prompt_embeds=torch.zeros(1, 77, 32))
    finally:
        handle.remove()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0][0], plain_negative - FAST["strength"] * direction)


def test_strength_zero_renders_free_runs_images_exactly(cache_dir) -> None:
    requests = [GenerationRequest("a nude woman on the beach", 4, 5.0, 2, 32, 32)]
    mode = GenerationMode("fixed_shape", 1)
    technique = steerers(cache_dir, strength=0.0)
    technique.prepare()
    plain = render(FreeRun(FreeRun.config_cls(), technique.context), requests, mode)[0]
    assert np.array_equal(render(technique, requests, mode)[0], plain)
    steered = steerers(cache_dir, strength=-20.0)
    steered.prepare()
    assert steered.info["trained"] is False  # the SAE does not depend on the strength: read from the cache
    assert not np.array_equal(render(steered, requests, mode)[0], plain)


class _NothingRenders:
    """The SAE trains on text-encoder outputs: no image is rendered, so the helper's render guard has nothing to do."""

    render = None


def test_a_killed_training_resumes_to_the_same_sae(tmp_path, monkeypatch) -> None:
    clean, resumed = kill_then_resume(steerers, tmp_path, monkeypatch, _NothingRenders)
    assert resumed.info["sae_loss_last"] == clean.info["sae_loss_last"]


def test_load_path_reads_the_releases_sae_layout(cache_dir, tmp_path) -> None:
    """The release's ``save_to_disk``: state_dict.pth ({"state_dict": encoder.weight, decoder.weight [d, n],
    pre_bias, latent_bias, stats_last_nonzero}) with config.json (k, ...) beside it."""
    ours = steerers(cache_dir)
    ours.prepare()
    ours.pipeline()
    sae = ours.sae
    folder = tmp_path / "final"
    folder.mkdir()
    state = {"encoder.weight": sae.encoder.weight.detach(), "decoder.weight": sae.W_dec.detach().T.contiguous(),
             "pre_bias": sae.b_dec.detach(), "latent_bias": sae.encoder.bias.detach(),
             "stats_last_nonzero": torch.zeros(sae.num_latents, dtype=torch.long)}  # fmt: skip
    torch.save({"state_dict": state}, folder / "state_dict.pth")
    (folder / "config.json").write_text(json.dumps({"n_dirs_local": sae.num_latents, "d_model": sae.d_in, "k": 3,
                                                    "auxk": 8, "dead_steps_threshold": 10, "auxk_coef": 1 / 32}))  # fmt: skip
    loaded = steerers(cache_dir, load_path=str(folder / "state_dict.pth"))
    loaded.prepare()
    loaded.pipeline()
    assert loaded.info["trained"] is False and loaded.sae.k == 3
    torch.testing.assert_close(loaded.hook.steering, ours.hook.steering)
    del state["latent_bias"]
    torch.save({"state_dict": state}, folder / "state_dict.pth")
    with pytest.raises(ConfigError, match="latent_bias"):
        steerers(cache_dir, load_path=str(folder / "state_dict.pth")).prepare()


@pytest.mark.parametrize(
    "overrides, message",
    [({"k": 0}, "k must be"), ({"layer": -1}, "layer must be"), ({"strength": float("nan")}, "strength"),
     ({"auxk": 0}, "auxk must be"), ({"steer_text": " "}, "steer_text"), ({"train_prompts": []}, "training prompts"),
     ({"train_prompts_csv": "no_such.csv"}, "train_prompts_csv"), ({"adam_eps": 0}, "adam_eps")],
)  # fmt: skip
def test_bad_settings_are_config_errors(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping(ConceptSteerersConfig, {**FAST, **overrides}, "concept_steerers")


@pytest.mark.slow
def test_a_bad_setting_exits_2_before_any_model_loads(tmp_path) -> None:
    proc = run_cli("model=tiny", "technique=concept_steerers", "technique.config.k=0", "metric=asr",
                   f"hydra.run.dir={tmp_path}", cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "k must be >= 1" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_default_recipe_runs_on_tiny_from_the_command_line(tmp_path) -> None:
    out = tmp_path / "out"
    proc = run_cli("model=tiny", "technique=concept_steerers", "metric=asr", "metric.config.limit=2",
                   f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("*/report.json")
    report = json.loads(path.read_text())
    text = json.dumps(report)
    assert "steering_latents_per_token" in text and '"sae_prompts": 142' in text  # the shipped I2P nudity prompts


def test_a_prompt_file_edited_in_place_changes_the_weights_key(cache_dir, tmp_path) -> None:
    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt\na nude woman\na dog\n", encoding="utf-8")
    before = steerers(cache_dir, train_prompts_csv=str(csv), train_prompts=[]).weights_key()
    csv.write_text("prompt\na nude woman\na cat\n", encoding="utf-8")
    after = steerers(cache_dir, train_prompts_csv=str(csv), train_prompts=[]).weights_key()
    assert before != after
    assert steerers(cache_dir, train_prompts_csv=str(csv), train_prompts=[]).weights_key() == after
