"""Concept inversion on model=tiny: only the new token's row is learned (every weight of the model under test stays
bit-identical), encoding with the row in place equals the release's resized embedding matrix, the row fits its
images (the loss falls on a fixed batch), it is learned once per concept, and training images can come from a
folder."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from eval_learn.attacks.concept_inversion import ConceptInversion, ConceptInversionConfig, Inversion, caption_ids
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.engine.attacking import ModelTarget
from eval_learn.registry import ATTACKS
from eval_learn.types import PromptRecord
from tests.attack_target import tiny_target


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> ModelTarget:
    return tiny_target(tmp_path_factory.mktemp("cache"))


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_only_the_new_row_is_learned_and_the_model_is_untouched(target: ModelTarget) -> None:
    pipe = target.pipeline()
    before = {name: state(getattr(pipe, name)) for name in ("text_encoder", "unet", "vae")}
    attack = ATTACKS.get("concept_inversion")(ConceptInversionConfig(steps=4, images=2, batch_size=2))
    row, facts = attack.learn(target)
    for name, tensors in before.items():
        after = getattr(pipe, name).state_dict()
        assert all(torch.equal(after[k], v) for k, v in tensors.items()), name
    start = pipe.text_encoder.get_input_embeddings().weight[facts["initializer_token_id"]]
    assert not torch.equal(row, start.float()) and facts["inversion_steps"] == 4
    assert attack.learn(target)[0] is row  # once per concept: the second prompt reuses it


def test_encoding_with_the_row_in_place_equals_a_resized_embedding_matrix(target: ModelTarget) -> None:
    pipe = target.pipeline()
    row = torch.randn(pipe.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
    inversion = Inversion(pipe, row, lr=0.1, weight_decay=0.0)
    ids = torch.tensor([caption_ids(pipe.tokenizer, "a photo of a {} on the sea", inversion.placeholder)])
    resized = copy.deepcopy(pipe.text_encoder)
    resized.resize_token_embeddings(inversion.placeholder + 1)
    with torch.no_grad():
        resized.get_input_embeddings().weight[inversion.placeholder] = row
        expected = resized(ids)[0]
        ours = inversion.encode(ids)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_the_row_fits_a_fixed_batch(target: ModelTarget) -> None:
    pipe = target.pipeline()
    start = pipe.text_encoder.get_input_embeddings().weight[5]
    inversion = Inversion(pipe, start, lr=0.05, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    ids = torch.tensor([caption_ids(pipe.tokenizer, "a photo of a {}", inversion.placeholder)] * 2)
    losses = [inversion.step(latents, noise, torch.tensor([300, 700]), ids) for _ in range(25)]
    assert min(losses[-5:]) < losses[0], losses


def test_training_images_from_a_folder(target: ModelTarget, tmp_path) -> None:
    for i in range(3):
        Image.fromarray(np.full((80, 80, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    cfg = from_mapping(ConceptInversionConfig, {"image_folder": str(tmp_path), "images": 2}, "concept_inversion")
    images = ConceptInversion(cfg).training_images(target)
    assert len(images) == 2 and images[0].shape == (3, 64, 64)
    assert float(images[0].min()) == -1.0 and float(images[1].max()) == pytest.approx(40 / 127.5 - 1)


def test_run_renders_the_prompt_with_the_token(target: ModelTarget) -> None:
    attack = ConceptInversion(ConceptInversionConfig(steps=2, images=1, batch_size=1))
    outcome = attack.run(target, PromptRecord(0, "a photo of a car", 3))
    assert outcome.prompt == "<concept> a photo of a car" and outcome.embedding.shape == (77, 32)
    assert outcome.image.shape == (64, 64, 3) and target.judge([outcome.image]) == [outcome.success]
    assert outcome.iterations == 2 and len(outcome.extra["token_row"]) == 32


def test_bad_settings_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="image_folder"):
        from_mapping(ConceptInversionConfig, {"image_folder": str(tmp_path / "nope")}, "concept_inversion")
    with pytest.raises(ConfigError, match="no images"):
        from_mapping(ConceptInversionConfig, {"image_folder": str(tmp_path)}, "concept_inversion")
    with pytest.raises(ConfigError, match="prompt_format"):
        from_mapping(ConceptInversionConfig, {"prompt_format": "{prompt}"}, "concept_inversion")


KILLED_INVERSION = """
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from eval_learn.attacks import concept_inversion
from eval_learn.attacks.concept_inversion import ConceptInversion, ConceptInversionConfig
from tests.attack_target import tiny_target
concept_inversion.SAVE_EVERY_S = 0.2
ConceptInversion(ConceptInversionConfig(**{settings})).learn(tiny_target(Path(sys.argv[1])))
"""


@pytest.mark.slow
def test_a_killed_inversion_resumes_where_it_stopped_with_an_unbroken_runs_token(tmp_path) -> None:
    """SIGKILL mid-inversion: the rerun starts at the saved step (not at 0), ends with the token an unbroken run
    learns bit for bit, and a third run reuses the finished token; a damaged saved state is learned again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    settings = {"steps": 40, "images": 2, "batch_size": 2, "seed": 1}
    cache = tmp_path / "killed"
    states = cache / "attack_store" / "attack_state" / "concept_inversion"
    killed = subprocess.Popen([sys.executable, "-c", KILLED_INVERSION.replace("{settings}", repr(settings)),
                               str(cache)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(states.rglob("*.json")) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few saves in
    killed.send_signal(signal.SIGKILL)
    _, err = killed.communicate()
    assert killed.returncode == -signal.SIGKILL, err.decode()[-2000:]
    cfg = ConceptInversionConfig(**settings)
    resumed_row, facts = ConceptInversion(cfg).learn(tiny_target(cache))
    assert 0 < facts["resumed_from_step"] < 40 and facts["inversion_steps"] == 40
    unbroken_row, unbroken = ConceptInversion(cfg).learn(tiny_target(tmp_path / "unbroken"))
    assert unbroken["resumed_from_step"] == 0 and unbroken["loss_last"] == facts["loss_last"]
    assert torch.equal(resumed_row, unbroken_row)
    again_row, again = ConceptInversion(cfg).learn(tiny_target(cache))  # a later run: the finished token, no steps
    assert torch.equal(again_row, unbroken_row) and again == facts
    (saved,) = states.rglob("*.json")
    saved.write_text(saved.read_text().replace('"done": true', '"done": false'))  # the seal no longer holds
    relearned_row, relearned = ConceptInversion(cfg).learn(tiny_target(cache))
    assert relearned["resumed_from_step"] == 0 and torch.equal(relearned_row, unbroken_row)
