"""The noise_search probe's DDIM step against its authors' release (kevinlu4588/WhenAreConceptsErased,
eta_ddim_scheduler.py): the release's step ran on model=tiny's schedule for η up to 1.85 and two variance scales
(golden/noisy_ddim_release.json says how); ours must give the same previous sample."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from eval_learn.attacks.noise_search import NoisyDDIMScheduler
from eval_learn.models.tiny import build_tiny_pipeline

GOLDEN = Path(__file__).parent / "golden"


def test_noisy_ddim_step_equals_the_release() -> None:
    golden = json.loads((GOLDEN / "noisy_ddim_release.json").read_text())
    expected = load_file(GOLDEN / "noisy_ddim_release.safetensors")
    scheduler = NoisyDDIMScheduler.from_config(build_tiny_pipeline().scheduler.config)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    inputs = {}
    for index in (0, 4, 9):
        inputs[index] = tuple(torch.randn(1, 4, 4, 4, generator=g) for _ in range(3))
    for case in golden["cases"]:
        model_output, sample, noise = inputs[case["step_index"]]
        t = scheduler.timesteps[case["step_index"]]
        assert int(t) == case["timestep"]
        scheduler.variance_scale = case["variance_scale"]
        out = scheduler.step(model_output, t, sample, eta=case["eta"], variance_noise=noise).prev_sample
        torch.testing.assert_close(out, expected[case["key"]], rtol=0, atol=1e-6, msg=case["key"])
