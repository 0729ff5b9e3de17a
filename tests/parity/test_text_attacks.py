"""Ring-A-Bell and MMA-Diffusion against their authors' releases, run on model=tiny's text encoder (how: the
``command`` of golden/ring_a_bell_release.json and golden/mma_diffusion_release.json). Both searches draw their random
numbers in the releases' order from generators seeded as the releases seed theirs, so the whole search is compared,
not only its deterministic parts: the concept vector, every generation's best fitness and the final tokens
(Ring-A-Bell); the step-1 gradient and its top-k set, every step's loss and the final control (MMA-Diffusion)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from eval_learn.attacks.mma_diffusion import MMADiffusion, MMADiffusionConfig, banned_ids, pooled, token_gradient
from eval_learn.attacks.ring_a_bell import (
    GeneticSearch,
    RingABell,
    RingABellConfig,
    built_in_pairs,
    concept_vector,
    encode,
    read_pairs,
)
from eval_learn.attacks.text_encoder import TextEncoder
from eval_learn.types import PromptRecord
from tests.attack_target import text_target

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    with safe_open(GOLDEN / f"{name}.safetensors", "pt") as f:
        assert f.metadata()["commit"] == meta["release"]["commit"]
    return meta, load_file(GOLDEN / f"{name}.safetensors")


@pytest.mark.slow
def test_ring_a_bell_matches_the_release_notebooks(tmp_path) -> None:
    meta, tensors = golden("ring_a_bell_release")
    assert meta["release"]["commit"] == RingABell.follows["commit"]
    defaults = RingABellConfig()
    assert meta["release_parameters"] == {"population_size": defaults.population, "generation": defaults.generations,
        "mutateRate": defaults.mutation_rate, "crossoverRate": defaults.crossover_rate, "length": defaults.tokens,
        "cof": defaults.eta}  # fmt: skip
    encoder = TextEncoder.of(text_target(tmp_path, PromptRecord(0, meta["prompt"], 0)))
    # The vector: our weighted mean over 50 pairs vs the notebook's mean over its 231 kept copies (float32 summation
    # order only; measured 1.1e-6 of entries up to 0.78).
    ours = concept_vector(encoder, *read_pairs(built_in_pairs("nudity")))
    torch.testing.assert_close(ours, tensors["concept_vector"], rtol=0, atol=1e-5)
    # The search, from the release's vector, is the release's to the last bit (measured: equal).
    goal = (
        encode(encoder, encoder.ids([meta["prompt"]])) + meta["release_parameters"]["cof"] * tensors["concept_vector"]
    )
    search = GeneticSearch(RingABellConfig(seed=meta["seed"], generations=meta["generations"]), encoder, goal)
    curve = []
    for generation in range(meta["generations"]):
        curve.append(float(search.select()[0][0]))
        if generation != meta["generations"] - 1:
            search.breed()
    assert curve == meta["best_fitness_per_generation"]
    assert search.population[0].tolist() == meta["final_token_ids"]
    assert encoder.tokenizer.decode(search.population[0][1:17]) == meta["final_prompt"]
    assert any(b > a for a, b in zip(curve, curve[1:], strict=False))  # the release's best can get worse (see differs)


@pytest.mark.slow
def test_mma_diffusion_matches_the_release_script(tmp_path) -> None:
    meta, tensors = golden("mma_diffusion_release")
    assert meta["release"]["commit"] == MMADiffusion.follows["commit"]
    defaults = MMADiffusionConfig()
    assert (defaults.batch_size, defaults.topk, defaults.tokens, defaults.steps) == (512, 256, 20, 1000)
    target = text_target(tmp_path, PromptRecord(0, meta["target_prompt"], 0))
    encoder = TextEncoder.of(target)
    attack = MMADiffusion(MMADiffusionConfig(seed=meta["seed"], steps=meta["steps"], batch_size=meta["batch_size"]))
    banned = banned_ids(encoder.tokenizer, attack.config.words("nudity"))
    assert len(banned) == meta["banned_tokens"]
    assert attack.start(encoder.tokenizer, banned) == meta["control_init"]
    goal = pooled(encoder, encoder.ids([meta["target_prompt"]])).detach()
    grad = token_gradient(encoder, meta["control_init"], goal, range(0, 20))
    torch.testing.assert_close(grad.norm(dim=-1), tensors["gradient_row_norms"], rtol=1e-5, atol=0)
    top = tensors["topk_step1"].long()
    torch.testing.assert_close(torch.gather(grad, 1, top[:, :16]), tensors["gradient_at_top16"], rtol=1e-5, atol=1e-8)
    normed = grad / grad.norm(dim=-1, keepdim=True)
    normed[:, banned] = float("inf")
    assert torch.equal((-normed).topk(meta["topk"], dim=1).indices, top)
    # The whole search (measured: every step's loss equal to the last bit, the same final control).
    outcome = attack.run(target, PromptRecord(index=0, prompt=meta["target_prompt"], seed=0))
    assert outcome.extra["loss_curve"] == [[i + 1, loss] for i, (_, loss) in enumerate(meta["per_step"])]
    assert outcome.prompt == meta["best_control"] and outcome.extra["best_step"] == meta["best_step"]
    assert outcome.extra["best_loss"] == meta["best_loss"]
