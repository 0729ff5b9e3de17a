"""AdvUnlearn against its authors' release (OPTML-Group/AdvUnlearn, train-scripts/AdvUnlearn.py): golden/advunlearn_release.*
were produced by running the release's own AdvUnlearn() on model=tiny for 5 outer steps (2 warm-up, then 3 attack
rounds of 4 PGD steps), recording every random input it drew (the JSON's metadata says how). Replaying those inputs,
our trainer must reproduce its attack losses, adversarial embeddings, training losses and text-encoder change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval_learn.configs import from_mapping
from eval_learn.techniques.advunlearn import AdvUnlearnConfig, AdvUnlearnTrainer

GOLDEN = Path(__file__).parent / "golden"
RELEASE = json.loads((GOLDEN / "advunlearn_release.json").read_text())
INPUTS = load_file(GOLDEN / "advunlearn_release.safetensors")
ARGS = RELEASE["args"]
# Measured on this machine (torch 2.13.0 CPU): every loss, embedding sum and weight change equal to the release's
# bit for bit (difference 0). The tolerance leaves room for another BLAS summing in another order.
RTOL = 1e-5


def config() -> AdvUnlearnConfig:
    return from_mapping(AdvUnlearnConfig, {
        "erase_concept": ARGS["prompt"], "retain_set": ARGS["dataset_retain"], "retain_batch": ARGS["retain_batch"],
        "retain_loss_weight": ARGS["retain_loss_w"], "attack_method": ARGS["attack_method"],
        "train_method": ARGS["train_method"], "component": ARGS["component"], "norm_layer": ARGS["norm_layer"],
        "sample_guidance": ARGS["start_guidance"], "negative_guidance": ARGS["negative_guidance"],
        "train_steps": ARGS["iterations"], "learning_rate": ARGS["lr"], "sample_steps": ARGS["ddim_steps"],
        "attack_tokens": ARGS["adv_prompt_num"], "attack_type": ARGS["attack_type"],
        "attack_init": ARGS["attack_init"], "warmup_steps": ARGS["warmup_iter"], "attack_steps": ARGS["attack_step"],
        "attack_lr": ARGS["attack_lr"], "attack_every": ARGS["adv_prompt_update_step"],
    }, "advunlearn")  # fmt: skip


def close(ours: list[float], theirs: list[float]) -> float:
    assert len(ours) == len(theirs)
    return max(abs(a - b) / abs(b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.slow
def test_five_outer_steps_equal_the_releases_on_its_recorded_inputs(tiny_pipe) -> None:
    trainer = AdvUnlearnTrainer(tiny_pipe, config(), "cpu", 64, 64)
    before = {n: p.detach().clone() for n, p in tiny_pipe.text_encoder.named_parameters()}
    batches = RELEASE["sample_batch"]
    draws = [(k, t) for k, t, n in zip(RELEASE["till_T"], RELEASE["t"], batches, strict=True) if n == 1]
    samples = [INPUTS[f"z.{i}"] for i in range(len(batches))]
    inits = [INPUTS[f"init.{j}"] for j in range(len(RELEASE["adversarial"]))]
    trainer.draw_timestep = lambda: draws.pop(0)

    def partial_sample(k: int, cond: torch.Tensor) -> torch.Tensor:
        z = samples.pop(0)
        assert len(z) == len(cond)
        return z

    trainer.partial_sample = partial_sample
    trainer.retain.at = lambda i: RELEASE["retain"][i]
    trainer.random_rows = lambda k: inits.pop(0)
    rounds = []
    attack = trainer.run_attack

    def recorded_attack(word: str, emb: torch.Tensor) -> None:
        attack(word, emb)
        rows, ids = trainer.state["adv_rows"], trainer.state["adv_ids"]
        rounds.append({"ids": ids[0, :6].tolist(), "slot_sum": float(rows[0, 1:2].sum()),
                       "slot_abs_sum": float(rows[0, 1:2].abs().sum()), "rows_sum": float(rows.sum())})  # fmt: skip

    trainer.run_attack = recorded_attack
    losses = trainer.train(None)
    assert not draws and not samples and not inits  # every recorded input used, in the release's order
    assert close([x for r in trainer.attack_losses for x in r], RELEASE["attack_losses"]) < RTOL
    assert close(losses, RELEASE["train_losses"]) < RTOL
    for ours, theirs in zip(rounds, RELEASE["adversarial"], strict=True):
        assert ours["ids"] == theirs["ids"]
        for key in ("slot_sum", "slot_abs_sum", "rows_sum"):
            assert abs(ours[key] - theirs[key]) <= RTOL * max(1.0, abs(theirs[key])), (key, ours, theirs)
    after = dict(tiny_pipe.text_encoder.named_parameters())
    changed = {n for n in after if not torch.equal(after[n].detach(), before[n])}
    assert len(changed) == RELEASE["trained_tensors"]
    for name, change in RELEASE["abs_change"].items():
        ours = float((after[name].detach() - before[name]).abs().sum())
        assert abs(ours - change) <= RTOL * change, (name, ours, change)
