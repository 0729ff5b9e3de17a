"""Concept inversion against its authors' release (NYU-DICE-Lab/circumventing-concept-erasure, esd/concept_inversion.py):
the release's own script trained four steps on model=tiny with a UCE-edited UNet as the erased model
(golden/concept_inversion_release.json says how); fed the same latents, noise, timesteps and caption ids, our update
must give the same loss at every step and the same learned row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval_learn.attacks.concept_inversion import Inversion
from tests.attack_target import tiny_target

GOLDEN = Path(__file__).parent / "golden"


def test_losses_and_learned_row_equal_the_release(tmp_path) -> None:
    golden = json.loads((GOLDEN / "concept_inversion_release.json").read_text())
    tensors = load_file(GOLDEN / "concept_inversion_release.safetensors")
    pipe = tiny_target(tmp_path).pipeline()
    start = pipe.tokenizer(golden["initializer_token"], add_special_tokens=False).input_ids
    assert len(start) == 1
    inversion = Inversion(pipe, pipe.text_encoder.get_input_embeddings().weight[start[0]], golden["lr"],
                          golden["weight_decay"])  # fmt: skip
    assert inversion.placeholder == golden["placeholder_id"]
    losses = [
        inversion.step(latents, noise, torch.tensor(t), torch.tensor(ids))
        for latents, noise, t, ids in zip(tensors["latents"], tensors["noise"], golden["timesteps"], golden["ids"],
                                          strict=True)
    ]  # fmt: skip
    assert losses == pytest.approx(golden["loss"], rel=1e-4)
    torch.testing.assert_close(inversion.row.detach(), tensors["learned"].reshape(-1), rtol=0, atol=1e-5)
