"""AdvUnlearn: the adversarial prompt layouts; the inner attack finds an embedding the model reads as the concept;
the outer erasure loss falls while only the text encoder changes (the UNet bit-identical); the release's layer
rule; the authors' text-encoder files load; caching and resume after a kill; bad settings fail before any model."""

from __future__ import annotations

import pytest
import torch

from eval_learn.configs import ConfigError, from_mapping
from eval_learn.models import resolve_model
from eval_learn.runtime import RunContext
from eval_learn.techniques.advunlearn import (
    AdvUnlearn,
    AdvUnlearnConfig,
    AdvUnlearnTrainer,
    RetainSampler,
    text_encoder_parameters,
)
from eval_learn.techniques.advunlearn_attack import SoftPromptAttack, adversarial_prompt, attack_loss
from tests.conftest import ROOT, run_cli
from tests.test_ssd import kill_then_resume

FAST = {"erase_concept": "red", "retain_prompts": ["a blue car", "a green house", "a dog"], "retain_batch": 2,
        "train_steps": 4, "warmup_steps": 1, "attack_steps": 2, "sample_steps": 2, "learning_rate": 1e-3,
        "attack_lr": 1e-2}  # fmt: skip


def context(cache) -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=cache)


def test_adversarial_tokens_go_where_the_insertion_says() -> None:
    ids = torch.tensor([[0, 11, 12, 9, 9, 9, 9, 9]])  # start, two words, end/padding
    rows = ids[..., None].float().expand(1, 8, 2).clone()
    adv = torch.full((1, 1, 2), -1.0)
    layouts = {"prefix_k": [0, -1, 11, 12, 9, 9, 9, 9], "suffix_k": [0, 11, 12, -1, 9, 9, 9, 9],
               "replace_k": [0, -1, 9, 9, 9, 9, 9, 9], "mid_k": [0, 11, -1, 12, 9, 9, 9, 9],
               "insert_k": [0, 11, -1, 12, 9, 9, 9, 9]}  # fmt: skip
    for insertion, expected in layouts.items():
        new_ids, new_rows = adversarial_prompt(ids, rows, adv, 2, insertion)
        assert new_rows[0, :, 0].tolist() == expected, insertion
        assert new_ids.shape == ids.shape and new_ids[0, 0] == 0 and new_ids[0, -1] == 9
    new_ids, new_rows = adversarial_prompt(ids, rows, torch.ones(1, 2, 2), 2, "add")  # k = the number of words
    assert new_rows[0, :, 0].tolist() == [0, 12, 13, 9, 9, 9, 9, 9] and new_ids[0].tolist() == [
        0,
        11,
        12,
        9,
        9,
        9,
        9,
        9,
    ]


@pytest.mark.slow
def test_the_inner_attack_finds_an_embedding_the_model_reads_as_the_concept(tiny_pipe) -> None:
    """On fixed draws the attack lowers its objective: the distance between the model's prediction for the
    adversarial prompt (a random start token, then 'a car') and the original's prediction for the concept."""
    trainer = AdvUnlearnTrainer(tiny_pipe, from_mapping(AdvUnlearnConfig, FAST, "advunlearn"), "cpu", 64, 64)
    g = torch.Generator().manual_seed(1)
    x_t, t = torch.randn(2, 4, 8, 8, generator=g), 500
    concept = trainer.encode_frozen(["a red car", "a red car"])
    with torch.no_grad():
        target = trainer.eps(trainer.frozen_unet, x_t, t, concept)
    ids = trainer.ids(["a car"])
    rows = trainer.rows_of(ids)

    def loss_of(adv_ids: torch.Tensor, adv_rows: torch.Tensor) -> torch.Tensor:
        cond = trainer.encode_trained(adv_ids, adv_rows).expand(2, -1, -1)
        return attack_loss(trainer.eps(trainer.unet, x_t, t, cond), target)

    start = trainer.random_rows(1)
    build = lambda adv: adversarial_prompt(ids, rows, adv, 2, "prefix_k")  # noqa: E731
    first = float(loss_of(*build(start)))
    adv_ids, adv_rows, losses = SoftPromptAttack(steps=30, lr=0.05).run(start, build, loss_of)
    assert len(losses) == 30 and losses[0] == pytest.approx(first)
    assert float(loss_of(adv_ids, adv_rows)) < 0.8 * first
    assert not torch.equal(adv_rows[0, 1], start[0, 0]) and torch.equal(adv_rows[0, 2:], rows[0, 1:-1])


@pytest.mark.slow
def test_only_the_text_encoder_changes_and_the_outer_losses_fall(tiny_pipe) -> None:
    """Measured: the erasure loss on the plain prompt 0.0099 -> 0.0075; training losses 0.026 (first adversarial
    step) -> 0.005."""
    cfg = from_mapping(AdvUnlearnConfig, {**FAST, "train_steps": 6, "learning_rate": 1e-2}, "advunlearn")
    trainer = AdvUnlearnTrainer(tiny_pipe, cfg, "cpu", 64, 64)
    unet_before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    text_before = {n: p.detach().clone() for n, p in tiny_pipe.text_encoder.named_parameters()}
    g = torch.Generator().manual_seed(2)  # fixed inputs, measured before and after
    x_t, retain_x_t = torch.randn(1, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    ids = trainer.ids(["red"])
    concept = trainer.encode_frozen(["red"])

    def erasure() -> float:
        with torch.no_grad():
            return sum(float(trainer.outer_loss(x_t, t, concept, ids, trainer.rows_of(ids), ["a dog", "a blue car"],
                                                retain_x_t)[0]) for t in (200, 500, 800))  # fmt: skip

    start = erasure()
    losses = trainer.train(None)
    assert len(losses) == 6 and len(trainer.attack_losses) == 5 and all(len(r) == 2 for r in trainer.attack_losses)
    assert erasure() < 0.85 * start and losses[-1] < 0.5 * losses[1]  # after the warm-up step: adversarial prompts
    assert all(torch.equal(p.detach(), unet_before[n]) for n, p in tiny_pipe.unet.named_parameters())
    changed = {n for n, p in tiny_pipe.text_encoder.named_parameters() if not torch.equal(p.detach(), text_before[n])}
    assert changed == {n.removeprefix("text_encoder.") for n in trainer.params}
    assert not any(n.startswith(("embeddings", "text_model.embeddings")) for n in changed)


def test_the_releases_layer_rule_selects_by_name_prefix() -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=12,
                                           num_attention_heads=2, max_position_embeddings=8))  # fmt: skip

    def layers(method: str, component: str = "all", norm: bool = False) -> set[str]:
        names = text_encoder_parameters(encoder, method, component, norm)
        return {n.removeprefix("text_model.").split(".")[2] if ".layers." in n else "norm" for n in names}

    assert layers("text_encoder_layer01") == {"0", "1", "10", "11"}  # "encoder.layers.1" also starts layers 10, 11
    assert layers("text_encoder_layer0") == {"0"} and layers("text_encoder_layer0", norm=True) == {"0", "norm"}
    assert layers("text_encoder_full") == {*map(str, range(12)), "norm"}
    assert layers("text_encoder_full", "ffn") == set(map(str, range(12)))  # the norm only with component all
    ffn = text_encoder_parameters(encoder, "text_encoder_full", "ffn", False)
    assert ffn and all(".mlp." in n for n in ffn)


def test_retain_batches_cover_every_prompt_once_per_pass() -> None:
    sampler = RetainSampler([f"p{i}" for i in range(7)], 3, seed=4)
    first_pass = sampler.at(0) + sampler.at(1)  # 7 // 3 = 2 batches, then a new pass
    assert len(set(first_pass)) == 6 and sampler.at(1) == RetainSampler(sampler.prompts, 3, 4).at(1)
    assert len(sampler.at(2)) == 3


def test_the_authors_text_encoder_files_load(tmp_path, tiny_pipe) -> None:
    """Their HF subfolder's CLIPTextModel keys (text_model.*) and their training script's TextEncoder-*.pt (a
    CustomTextEncoder: text_encoder.text_model.* plus aliases) both load into the pipeline's text encoder."""
    from safetensors.torch import save_file

    own = {n: p.detach().clone() * 0.5 for n, p in tiny_pipe.text_encoder.state_dict().items()}
    flat = {n.removeprefix("text_model."): t for n, t in own.items()}
    save_file({f"text_model.{n}": t for n, t in flat.items()}, tmp_path / "model.safetensors")
    custom = {f"text_encoder.text_model.{n}": t for n, t in flat.items()}
    custom.update(
        {n.replace("embeddings.", "embedding.", 1): t for n, t in flat.items() if n.startswith("embeddings.")}
    )
    custom.update({n: t for n, t in flat.items() if n.startswith(("encoder.", "final_layer_norm."))})
    torch.save(custom, tmp_path / "TextEncoder-text_encoder_full-epoch_999.pt")
    for path in (tmp_path / "model.safetensors", tmp_path / "TextEncoder-text_encoder_full-epoch_999.pt"):
        technique = AdvUnlearn(from_mapping(AdvUnlearnConfig, {"load_path": str(path)}, "advunlearn"),
                               context(tmp_path / "cache"))  # fmt: skip
        technique.prepare()
        assert technique.info["trained"] is False and len(technique.weights) == len(flat)
        loaded = technique.pipeline().text_encoder.state_dict()
        assert all(torch.equal(loaded[n].float(), own[n]) for n in own), path


class NoImages:
    """AdvUnlearn renders no training images (kill_then_resume checks that a resumed run renders none again)."""

    def render(self) -> None:
        pass


@pytest.mark.slow
def test_a_killed_training_resumes_and_ends_with_the_same_weights(tmp_path, monkeypatch) -> None:
    fields = {**FAST, "attack_init": "latest"}  # the previous round's embedding is part of the saved state
    build = lambda cache: AdvUnlearn(from_mapping(AdvUnlearnConfig, fields, "advunlearn"), context(cache))  # noqa: E731
    clean, resumed = kill_then_resume(build, tmp_path, monkeypatch, NoImages)
    assert clean.info["attack_rounds"] == 3 and resumed.info["attack_rounds"] == 1
    assert resumed.info["losses"] == clean.info["losses"]
    again = build(tmp_path / "clean")  # the cache: no training
    again.prepare()
    assert again.info["trained"] is False and again.weights_sha256 == clean.weights_sha256


@pytest.mark.slow
def test_a_unet_train_method_changes_only_its_unet_parameters(tiny_pipe) -> None:
    cfg = from_mapping(AdvUnlearnConfig, {**FAST, "train_method": "xattn", "train_steps": 2}, "advunlearn")
    trainer = AdvUnlearnTrainer(tiny_pipe, cfg, "cpu", 64, 64)
    text_before = {n: p.detach().clone() for n, p in tiny_pipe.text_encoder.named_parameters()}
    unet_before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    trainer.train(None)
    assert all(torch.equal(p.detach(), text_before[n]) for n, p in tiny_pipe.text_encoder.named_parameters())
    changed = {n for n, p in tiny_pipe.unet.named_parameters() if not torch.equal(p.detach(), unet_before[n])}
    assert (
        changed and all("attn2" in n for n in changed) and changed <= {n.removeprefix("unet.") for n in trainer.params}
    )


def test_bad_advunlearn_configs_fail_clearly(tmp_path) -> None:
    for fields, message in (({"train_method": "notime"}, "train_method 'notime' is not one of"),
                            ({"attack_type": "suffix"}, "not one of"),
                            ({"attack_steps": 0}, "attack_steps must be > 0"),
                            ({"attack_lr": float("nan")}, "attack_lr must be a finite number > 0"),
                            ({"retain_loss_weight": -1}, "retain_loss_weight must be a finite number >= 0"),
                            ({"retain_set": "coco"}, "retain_set 'coco' is neither one of"),
                            ({"retain_prompts": []}, "retain_prompts must be null or a non-empty list"),
                            ({"erase_concept": " "}, "erase_concept must be non-empty"),
                            ({"attack_tokens": 80}, "exceed 75 tokens"),
                            ({"load_path": str(tmp_path / "none.pt")}, "does not exist")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            from_mapping(AdvUnlearnConfig, fields, "advunlearn")


def test_a_bad_advunlearn_setting_exits_2_before_any_model_loads(tmp_path) -> None:
    proc = run_cli("model=tiny", "technique=advunlearn", "technique.config.attack_method=free_at", "metric=asr",
                   f"hydra.run.dir={tmp_path}", cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "attack_method" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
