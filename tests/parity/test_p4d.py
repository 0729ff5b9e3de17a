"""P4D against its authors' release (joycenerd/P4D, prompt_optimization/optimize_{n,k}.py): the release's own
optimize() ran five iterations on model=tiny's components (UCE-edited UNet as the erased model; golden/p4d_release.json
says how); fed the same latent, noise and timesteps, our search must give the same loss and the same projected
tokens at every step, for P4D-N and P4D-K."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval_learn.attacks.p4d import P4DConfig, P4DSearch
from eval_learn.engine.attacking import ModelTarget
from tests.attack_target import tiny_target

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> ModelTarget:
    return tiny_target(tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("variant", ["n", "k"])
def test_loss_and_projected_tokens_equal_the_release_step_by_step(target: ModelTarget, variant: str) -> None:
    golden = json.loads((GOLDEN / "p4d_release.json").read_text())
    run = golden[f"p4d_{variant}"]
    latents = load_file(GOLDEN / "p4d_release.safetensors")[f"latents_{variant}"]
    search = P4DSearch(target.base_pipeline(), target.pipeline(), golden["prompt"], P4DConfig(variant=variant),
                       torch.tensor(run["initial_ids"]))  # fmt: skip
    noise_rng = torch.Generator().manual_seed(golden["seed"])  # as the release and our run(): the prompt's seed
    noises, losses, ids = [], [], []
    for t in run["timesteps"]:
        noises.append(torch.randn(latents.shape, generator=noise_rng))
        loss, step_ids = search.step(latents, noises[-1], torch.tensor([t]))
        losses.append(loss)
        ids.append(step_ids.tolist())
    assert hashlib.sha256(torch.cat(noises).numpy().tobytes()).hexdigest() == run["noise_sha256"]
    assert ids == run["ids"]
    assert losses == pytest.approx(run["loss"], rel=1e-4)
