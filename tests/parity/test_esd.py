"""ESD against its authors' two releases (rohitgandikota/erasing): the golden numbers in golden/esd_*.json were
produced by running the releases' own code (each file's metadata says how); here our code must reproduce them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval_learn.configs import from_mapping
from eval_learn.techniques.esd import ESDConfig, ESDTrainer, select_parameters

GOLDEN = Path(__file__).parent / "golden"
COMPVIS = json.loads((GOLDEN / "esd_compvis.json").read_text())
ESD_SD = json.loads((GOLDEN / "esd_sd_step.json").read_text())


def sd14_unet() -> torch.nn.Module:
    """SD-1.4's UNet architecture (diffusers' config of CompVis/stable-diffusion-v1-4), without weights."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)


@pytest.mark.parametrize("method", ["noxattn", "xattn", "selfattn", "full"])
def test_compvis_parameter_sets_equal_train_esd_py_on_the_sd14_architecture(method: str) -> None:
    unet = sd14_unet()
    assert sum(p.numel() for p in unet.parameters()) == COMPVIS["all_params"]["elements"]
    selected = select_parameters(unet, method, "compvis")
    # Exact: the same number of tensors and of trained numbers as the release's name rule on the ldm UNet.
    assert len(selected) == COMPVIS["params"][method]["tensors"]
    assert sum(p.numel() for p in selected.values()) == COMPVIS["params"][method]["elements"]


def test_compvis_noxattn_adds_the_norm_layers_and_drops_time_embedding_and_conv_out() -> None:
    unet = sd14_unet()
    compvis, diffusers = select_parameters(unet, "noxattn", "compvis"), select_parameters(unet, "noxattn")
    only_compvis = set(compvis) - set(diffusers)
    assert only_compvis and all("norm" in n for n in only_compvis)
    assert len(only_compvis) == 216  # the GroupNorm and LayerNorm weights and biases outside cross-attention
    assert {n.split(".")[0] for n in set(diffusers) - set(compvis)} == {"time_embedding", "conv_out"}


def sd14_ddim():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    return scheduler


def test_compvis_partial_sampling_visits_the_release_samplers_timesteps(tiny_pipe) -> None:
    """For every drawn k, our DDIM steps are the release DDIMSampler's (it drops the highest timestep and stops
    after index k - 1): same timesteps, and the same latent for the same start code and eps function."""
    tiny_pipe.scheduler = sd14_ddim()
    cfg = from_mapping(ESDConfig, {"sample_steps": 50, "erase_concept": "red"}, "esd")
    trainer = ESDTrainer(tiny_pipe, cfg, "cpu", 64, 64)
    start = torch.tensor(COMPVIS["ddim_start_code"]).view(1, 4, 8, 8)
    worst = 0.0
    for k in range(50):
        run, low, high = trainer.schedule(k)
        release = COMPVIS["ddim_till_T"][str(k)]
        assert [int(t) for t in run] == release["timesteps"], k
        assert (low, high) == (round(k / 50 * 1000), round((k + 1) / 50 * 1000))
        x = start.clone()
        for t in run:
            x = trainer.scheduler.step(0.05 * x + t.float() / 1e4, t, x).prev_sample
        for key, ours in (("latent_sum", x.double().sum()), ("latent_abs_sum", x.double().abs().sum())):
            worst = max(worst, abs(float(ours) - release[key]) / max(1.0, abs(release[key])))
    assert worst < 1e-4, worst  # float32 schedules computed two ways (ldm: float64 then cast)


@pytest.mark.slow
def test_compvis_training_timestep_is_drawn_inside_the_bucket(tiny_pipe) -> None:
    cfg = from_mapping(ESDConfig, {"sample_steps": 4, "erase_concept": "red"}, "esd")
    trainer = ESDTrainer(tiny_pipe, cfg, "cpu", 64, 64)
    seen = set()
    for _ in range(40):
        _, t = trainer.sample_xt()
        seen.add(int(t))
    buckets = {int(t) // 250 for t in seen}
    assert len(seen) > len(buckets)  # random inside a bucket, not the bucket's DDIM timestep


@pytest.mark.parametrize("run", sorted(ESD_SD["runs"]))
def test_one_diffusers_training_step_equals_esd_sd_py(tiny_pipe, run: str) -> None:
    golden = ESD_SD["runs"][run]
    args = golden["args"].split()
    concept = args[args.index("--erase_concept") + 1]
    erase_from = args[args.index("--erase_from") + 1] if "--erase_from" in args else None
    method = {"esd-u": "noxattn", "esd-x": "xattn"}[args[args.index("--train_method") + 1]]
    cfg = from_mapping(ESDConfig, {"loop": "diffusers", "erase_concept": concept, "erase_from": erase_from,
                                   "train_method": method, "negative_guidance": 1.0}, "esd")  # fmt: skip
    trainer = ESDTrainer(tiny_pipe, cfg, "cpu", 64, 64)
    assert int(trainer.scheduler.timesteps[golden["k"]]) == golden["t"]  # the release's t for its drawn k
    assert sorted(trainer.params) == sorted(golden["grads"])  # the same trained tensors
    x_t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    loss = trainer.loss(x_t, torch.tensor(golden["t"]))
    loss.backward()
    assert loss.item() == pytest.approx(golden["loss"], rel=1e-5)
    worst = 0.0
    for name, param in trainer.params.items():
        norm = float(param.grad.double().norm())
        worst = max(worst, abs(norm - golden["grads"][name]["norm"]) / max(golden["grads"][name]["norm"], 1e-12))
        bound = golden["grads"][name]["norm"] * param.numel() ** 0.5  # the largest a sum of this gradient can be
        assert abs(float(param.grad.double().sum()) - golden["grads"][name]["sum"]) <= 1e-5 * bound + 1e-12, name
    assert worst < 1e-4, worst  # relative difference of each tensor's gradient norm
