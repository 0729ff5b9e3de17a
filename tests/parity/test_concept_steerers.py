"""Concept Steerers parity: the release's own SAE trainer, SAE and steering hook (kim-dahye/steerers) were run on
model=tiny's pipeline outside the project (the golden's metadata names the commit, the environment and the command).
On the same text-encoder activations and the same batches our k-sparse objective must follow the release's training
step by step, our SAE must encode as its SAE does, and our steering must give the same steered hidden states and the
same image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from eval_learn.engine.requests import GenerationRequest
from eval_learn.engine.sampling import GenerationMode, render
from eval_learn.models import resolve_model
from eval_learn.runtime import RunContext
from eval_learn.techniques.concept_steerers import ConceptSteerers, ConceptSteerersConfig, layer_outputs
from eval_learn.techniques.sae_training import KSparseObjective, TopKSAE

GOLDEN = Path(__file__).parent / "golden" / "concept_steerers_release.safetensors"


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(GOLDEN), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def ours(state: dict[str, torch.Tensor], k: int) -> TopKSAE:
    """The release's SparseAutoencoder state in our layout: decoder transposed, latent_bias as the encoder's bias."""
    return TopKSAE.from_tensors({"encoder.weight": state["encoder.weight"], "encoder.bias": state["latent_bias"],
                                 "W_dec": state["decoder.weight"].T.contiguous(), "b_dec": state["pre_bias"]}, k)  # fmt: skip


def release_state(t: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in t.items() if k.startswith(prefix)}


def test_the_layer_outputs_are_the_releases(golden, tiny_pipe) -> None:
    meta, t = golden
    assert meta["commit"] == "82326cf7ae48755d9fbf59cf01943beab06c4927"
    rows = layer_outputs(tiny_pipe, int(meta["layer"]), json.loads(meta["train_prompts"]))
    torch.testing.assert_close(rows.reshape(-1, rows.shape[-1]), t["rows"], atol=1e-5, rtol=1e-5)


def test_training_follows_the_releases_step_by_step(golden) -> None:
    """Same start, same batches, our objective in the training loop's order (loss, backward, before_step, step)."""
    meta, t = golden
    k, batches = int(meta["k"]), json.loads(meta["batches"])
    sae = ours(release_state(t, "init."), k)
    objective = KSparseObjective(int(meta["auxk"]), 1 / 32, int(meta["dead_steps"]), 6.25e-10)
    objective.start(sae, torch.cat([t["rows"][b] for b in batches[:8]]))
    optimizer = torch.optim.Adam(sae.parameters(), lr=4e-4, eps=6.25e-10)
    losses = []
    for b in batches[8:]:
        optimizer.zero_grad(set_to_none=True)
        loss = objective.loss(sae, t["rows"][b])
        loss.backward()
        objective.before_step(sae)
        optimizer.step()
        losses.append(loss.item())
    assert int((objective.steps_since_active > int(meta["dead_steps"])).sum()) > 0  # the AuxK term had dead latents
    torch.testing.assert_close(torch.tensor(losses), t["losses"], atol=1e-4, rtol=1e-4)
    trained = ours(release_state(t, "trained."), k)
    for name, tensor in sae.state_dict().items():
        torch.testing.assert_close(tensor, trained.state_dict()[name], atol=1e-5, rtol=1e-4)


def test_encoding_and_steering_match_the_release(golden, tmp_path) -> None:
    meta, t = golden
    k = int(meta["k"])
    sae = ours(release_state(t, "trained."), k)
    torch.testing.assert_close(sae.encode(t["steer_hidden"])[:8], t["encoded"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sae.pre_acts(t["steer_hidden"])[:8], t["active_latents"], atol=1e-6, rtol=1e-5)
    config = ConceptSteerersConfig(steer_text=meta["steer_text"], strength=float(meta["strength"]), layer=0, k=k,
                                   train_prompts_csv=None, train_prompts=["unused"])  # fmt: skip
    technique = ConceptSteerers(config, RunContext(resolve_model("tiny"), "cpu", torch.float32, 0, tmp_path))
    technique.weights = {f"concept_steerers_sae.{n}": v for n, v in sae.tensors().items()}
    pipe = technique.pipeline()
    torch.testing.assert_close(technique.hook.steering, t["steering"], atol=1e-5, rtol=1e-5)
    seen: list[torch.Tensor] = []
    handle = pipe.text_encoder.encoder.layers[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    try:
        size, steps, guidance = int(meta["size"]), int(meta["steps"]), float(meta["guidance_scale"])
        request = GenerationRequest(meta["prompt"], int(meta["seed"]), guidance, steps, size, size)
        image = render(technique, [request], GenerationMode("strict", 1))[0]
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0][0], t["steered_prompt"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen[1][0], t["steered_negative"], atol=1e-5, rtol=1e-5)
    difference = np.abs(image.astype(int) - t["image"].numpy().astype(int)).max()
    assert difference <= 1, difference  # measured: see docs/recipes_concept_steerers.md
