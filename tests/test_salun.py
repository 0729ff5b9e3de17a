"""SalUn: the saliency mask keeps exactly the top fraction by gradient magnitude; weights outside it are bit-identical
after training; the forget loss goes down; the technique caches and resumes; bad settings fail before any model."""

from __future__ import annotations

import pytest
import torch

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.runtime import RunContext
from eval_learn.techniques.salun import SalUn, SalUnConfig, SalUnTrainer, saliency_mask
from tests.conftest import ROOT, run_cli
from tests.test_ssd import kill_then_resume

FAST = {"erase_concept": "red", "forget_prompts": ["a red car"], "pseudo_prompts": ["a blue car"],
        "retain_prompts": ["a green house"], "images_per_prompt": 4, "image_steps": 2, "mask_batch_size": 2,
        "train_batch_size": 2, "epochs": 2, "learning_rate": 1e-3}  # fmt: skip


def test_the_mask_keeps_the_top_fraction_of_all_entries_together() -> None:
    grads = {"a": torch.tensor([0.1, -5.0, 0.2, 3.0]), "b": torch.tensor([[-0.3, 4.0], [0.0, -0.05]])}
    mask = saliency_mask(grads, 0.5)
    assert mask["a"].tolist() == [False, True, False, True] and mask["b"].tolist() == [[True, True], [False, False]]
    assert sum(int(m.sum()) for m in saliency_mask(grads, 0.25).values()) == 2  # floor(8 * 0.25)
    assert all(m.all() for m in saliency_mask(grads, 1.0).values())


def context(cache) -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=cache)


@pytest.mark.slow
def test_weights_outside_the_mask_are_bit_identical_and_the_forget_loss_goes_down(tiny_pipe) -> None:
    cfg = from_mapping(SalUnConfig, FAST, "salun")
    trainer = SalUnTrainer(tiny_pipe, cfg, "cpu", 64, 64)
    trainer.prepare(None)
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    g = torch.Generator().manual_seed(5)  # a fixed forget batch, measured before and after
    x0 = trainer.forget.sample(torch.arange(4), g, tiny_pipe.vae.config.scaling_factor)
    t, noise = torch.randint(0, 1000, (4,), generator=g), torch.randn(x0.shape, generator=g)

    def forget_loss() -> float:
        with torch.no_grad():
            x_t = trainer.noised(x0, t, noise)
            prediction = trainer.eps(x_t, t, ["a red car"] * 4)
            target = trainer.eps(x_t, t, ["a blue car"] * 4)
        return float(torch.nn.functional.mse_loss(prediction, target))

    start = forget_loss()
    losses = trainer.train(None)
    assert len(losses) == 4  # 2 epochs x 2 batches of D_f
    assert forget_loss() < start
    after = dict(tiny_pipe.unet.named_parameters())
    moved = 0
    for name, p in after.items():
        mask = trainer.mask.get(name, torch.zeros_like(p, dtype=torch.bool))
        assert torch.equal(p.detach()[~mask], before[name][~mask]), name
        moved += int((p.detach() != before[name]).sum())
    assert moved > 0 and sum(int(m.sum()) for m in trainer.mask.values()) == sum(p.numel() for p in after.values()) // 2


def test_train_method_xattn_trains_only_salient_cross_attention(tiny_pipe) -> None:
    trainer = SalUnTrainer(tiny_pipe, from_mapping(SalUnConfig, {**FAST, "train_method": "xattn"}, "salun"), "cpu",
                           64, 64)  # fmt: skip
    trainer.prepare(None)
    trainer.train(None)
    assert trainer.trained and all("attn2" in n for n in trainer.trained)


@pytest.mark.slow
def test_a_killed_salun_training_resumes_and_ends_with_the_same_weights(tmp_path, monkeypatch) -> None:
    build = lambda cache: SalUn(from_mapping(SalUnConfig, FAST, "salun"), context(cache))  # noqa: E731
    clean, resumed = kill_then_resume(build, tmp_path, monkeypatch, SalUnTrainer)
    assert len(clean.weights) == clean.info["trained_tensors"] and resumed.info["losses"] == clean.info["losses"]


def test_a_plain_unet_state_dict_loads_as_the_release_saves_it(tmp_path) -> None:
    from eval_learn.models.tiny import build_tiny_pipeline

    state = {n: p.detach().clone() * 0.5 for n, p in build_tiny_pipeline().unet.named_parameters()}
    torch.save(state, tmp_path / "diffusers-nsfw.pt")  # the release's converted UNet: a diffusers state dict
    technique = SalUn(from_mapping(SalUnConfig, {"load_path": str(tmp_path / "diffusers-nsfw.pt")}, "salun"),
                      context(tmp_path / "cache"))  # fmt: skip
    technique.prepare()
    unet = technique.pipeline().unet
    name = next(iter(state))
    assert torch.equal(dict(unet.named_parameters())[name].detach().float(), state[name])


def test_bad_salun_configs_fail_clearly() -> None:
    for fields, message in (({"mask_threshold": 0}, "mask_threshold must be in"),
                            ({"pseudo_prompts": ["a", "b"]}, "pseudo_prompts needs one prompt per forget prompt"),
                            ({"forget_prompts": []}, "forget_prompts must be a non-empty list"),
                            ({"alpha": -1}, "alpha must be a finite number >= 0"),
                            ({"train_method": "noxattn"}, "not one of"),
                            ({"learning_rate": 0}, "learning_rate must be")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            from_mapping(SalUnConfig, fields, "salun")


@pytest.mark.slow
def test_a_bad_salun_setting_exits_2_before_any_model_loads(tmp_path) -> None:
    proc = run_cli("model=tiny", "technique=salun", "technique.config.mask_threshold=2", "metric=asr",
                   f"hydra.run.dir={tmp_path}", cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "mask_threshold must be in (0, 1]" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
