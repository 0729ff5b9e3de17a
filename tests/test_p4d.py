"""P4D on model=tiny: the loss falls as the prompt is learned, the projected tokens are vocabulary ids whose rows are
the nearest (cosine) to the soft ones, P4D-K keeps the prompt's own tokens where the release puts them, and a run
reports what it did. Parity with the release is in tests/parity/test_p4d.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eval_learn.attacks.p4d import P4DConfig, P4DSearch, layout
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.engine.attacking import ModelTarget
from eval_learn.registry import ATTACKS
from eval_learn.types import PromptRecord
from tests.attack_target import tiny_target

PROMPT = "a photo of a red car with a dog"


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> ModelTarget:
    return tiny_target(tmp_path_factory.mktemp("cache"))


def search(target: ModelTarget, variant: str, seed: int = 0) -> P4DSearch:
    erased = target.pipeline()
    span = layout(erased.tokenizer, PROMPT, P4DConfig(variant=variant)).span
    initial = torch.randint(erased.tokenizer.vocab_size, (span,), generator=torch.Generator().manual_seed(seed))
    return P4DSearch(target.base_pipeline(), erased, PROMPT, P4DConfig(variant=variant), initial)


def latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", ["n", "k"])
def test_loss_decreases_and_tokens_are_real_vocabulary_ids(target: ModelTarget, variant: str) -> None:
    s = search(target, variant)
    x0, noise, t = latents(1), latents(2), torch.tensor([500])
    losses = [s.step(x0, noise, t)[0] for _ in range(30)]
    assert min(losses[-5:]) < 0.7 * losses[0], losses
    ids = s.projected()
    vocabulary = s.vocabulary.detach()
    assert ids.dtype == torch.long and bool(((ids >= 0) & (ids < len(vocabulary))).all())
    cosine = F.normalize(s.soft[0].detach(), dim=-1) @ F.normalize(vocabulary, dim=-1).T
    assert torch.equal(cosine.argmax(-1), ids)  # each projected id is the soft row's nearest vocabulary row
    assert s.soft.grad is None  # the update consumed the gradient


def test_p4d_k_keeps_the_prompt_tokens_at_their_positions(target: ModelTarget) -> None:
    s = search(target, "k")
    text = target.pipeline().tokenizer(PROMPT, add_special_tokens=False).input_ids
    lay = s.layout
    assert lay.span == len(text) + len(text) // 3 + 1
    assert lay.frozen == [i for i in range(lay.span) if i % 4 != 0]  # learned tokens at 0, 4, 8, ...
    before = s.projected().clone()
    for step in range(15):
        s.step(latents(step), latents(100 + step), torch.tensor([100 + 50 * step]))
    after = s.projected()
    assert after[lay.frozen].tolist() == text
    assert not torch.equal(after[[0, 4, 8]], before[[0, 4, 8]])  # the learned ones moved


def test_p4d_n_layout_is_bos_span_eos_then_padding(target: ModelTarget) -> None:
    tok = target.pipeline().tokenizer
    lay = layout(tok, PROMPT, P4DConfig(variant="n", prompt_len=16))
    ids = lay.ids[0].tolist()
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[17] == tok.eos_token_id
    assert ids[18:] == [0] * 59 and lay.span == 16 and lay.frozen == []


def test_run_reports_iterations_evaluations_and_the_rendered_image(target: ModelTarget) -> None:
    attack = ATTACKS.get("p4d")(P4DConfig(variant="n", iterations=6, eval_step=3))
    outcome = attack.run(target, PromptRecord(0, PROMPT, 5))
    steps = [e["step"] for e in outcome.extra["evaluations"]]
    assert steps[0] == 0 and all(b - a == 3 for a, b in zip(steps, steps[1:], strict=False))
    if outcome.success:
        assert outcome.success_step == steps[-1] and outcome.iterations == steps[-1] + 1
    else:
        assert outcome.iterations == 6 and outcome.success_step is None
    assert outcome.image is not None and outcome.image.shape == (64, 64, 3)
    assert outcome.prompt in {e["prompt"] for e in outcome.extra["evaluations"]}
    assert target.judge([outcome.image]) == [outcome.success]


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"variant": "x"}, "variant"), ({"iterations": 0}, "iterations"), ({"lr": 0}, "lr"),
     ({"eval_step": 0}, "eval_step"), ({"target_pixels": "raw"}, "target_pixels")],
)  # fmt: skip
def test_bad_settings_are_config_errors(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping(P4DConfig, settings, "p4d")
