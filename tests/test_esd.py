"""ESD: the target matches the paper's formula, only the selected parameters move, the loss falls, weights cache."""

from __future__ import annotations

import os

import pytest
import torch

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.runtime import RunContext
from eval_learn.techniques.esd import ESD, ESDConfig, ESDTrainer, select_parameters


def esd_config(**overrides) -> ESDConfig:
    return from_mapping(ESDConfig, {"train_steps": 3, "sample_steps": 4, **overrides}, "esd")


def make_context(cache_dir) -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=cache_dir)


def test_train_method_selects_exactly_its_parameters(tiny_pipe) -> None:
    unet = tiny_pipe.unet
    everything = {n for n, _ in unet.named_parameters()}
    xattn, selfattn = set(select_parameters(unet, "xattn")), set(select_parameters(unet, "selfattn"))
    noxattn = set(select_parameters(unet, "noxattn"))  # esd_sd.py's rule (loop diffusers)
    assert xattn == {n for n in everything if ".attn2." in n}
    assert {"to_q", "to_k", "to_v", "to_out"} <= {n.split(".attn2.")[1].split(".")[0] for n in xattn}
    assert selfattn == {n for n in everything if ".attn1." in n and ".norm" not in n}
    assert noxattn.isdisjoint(xattn) and selfattn <= noxattn
    assert {"conv_in.weight", "conv_out.weight"} <= noxattn
    assert any(".resnets." in n for n in noxattn)
    assert not any(".norm" in n for n in noxattn)  # ESD-u trains linear and conv layers, not normalisation
    assert set(select_parameters(unet, "full")) == everything
    # train-esd.py's rule (loop compvis): every parameter but cross-attention, time embedding and output layers.
    compvis = set(select_parameters(unet, "noxattn", "compvis"))
    frozen = {
        n for n in everything if ".attn2." in n or n.split(".")[0] in ("time_embedding", "conv_norm_out", "conv_out")
    }
    assert compvis == everything - frozen and any(".norm" in n for n in compvis)
    assert {"time_embedding.linear_1.weight", "conv_out.weight"} <= noxattn - compvis
    for method in ("xattn", "selfattn", "full"):
        assert set(select_parameters(unet, method, "compvis")) == set(select_parameters(unet, method))


@pytest.mark.parametrize("erase_from", [None, "photo"])
def test_target_matches_negative_guidance_formula(tiny_pipe, erase_from) -> None:
    cfg = esd_config(negative_guidance=1.5, erase_concept="red", erase_from=erase_from)
    trainer = ESDTrainer(tiny_pipe, cfg, "cpu", 64, 64)
    x_t, t = trainer.sample_xt()
    frozen = trainer.frozen
    with torch.no_grad():
        e_null = frozen(x_t, t, encoder_hidden_states=trainer._encode("")).sample
        e_red = frozen(x_t, t, encoder_hidden_states=trainer._encode("red")).sample
        e_photo = frozen(x_t, t, encoder_hidden_states=trainer._encode("photo")).sample
    # The paper's eq. 3; with erase_from esd_sd.py's target, whose negative guidance is eta + 1.
    expected = e_null - 1.5 * (e_red - e_null) if erase_from is None else e_photo - 2.5 * (e_red - e_null)
    assert torch.allclose(trainer.target(x_t, t), expected, atol=1e-6)
    # The model being edited is conditioned on the concept (or on c_from when erasing from a broader concept).
    assert torch.equal(trainer.emb_from, trainer._encode(erase_from or "red"))


@pytest.mark.parametrize("method", ["xattn", "noxattn", "selfattn"])
def test_training_changes_only_selected_parameters(tiny_pipe, method) -> None:
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    text_before = {n: p.detach().clone() for n, p in tiny_pipe.text_encoder.named_parameters()}
    trainer = ESDTrainer(tiny_pipe, esd_config(train_method=method, learning_rate=1e-3), "cpu", 64, 64)
    trainer.train()
    selected = set(trainer.params)
    changed = {n for n, p in tiny_pipe.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= selected
    assert len(changed) >= 0.5 * len(selected)
    assert all(torch.equal(p, text_before[n]) for n, p in tiny_pipe.text_encoder.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in trainer.frozen.named_parameters())


@pytest.mark.slow
def test_esd_loss_falls_on_held_out_partial_samples(tiny_pipe) -> None:
    torch.manual_seed(0)
    trainer = ESDTrainer(
        tiny_pipe,
        esd_config(train_steps=60, learning_rate=3e-4, train_method="xattn", negative_guidance=3.0),
        "cpu",
        64,
        64,
    )
    held_out = [trainer.sample_xt() for _ in range(6)]

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(trainer.loss(x, t).item() for x, t in held_out) / len(held_out)

    start = mean_loss()
    losses = trainer.train()
    end = mean_loss()
    assert len(losses) == 60
    assert end < 0.5 * start, (start, end)


def test_batched_partial_samples(tiny_pipe) -> None:
    trainer = ESDTrainer(tiny_pipe, esd_config(train_batch_size=3, learning_rate=1e-3), "cpu", 64, 64)
    x_t, t = trainer.sample_xt()
    assert x_t.shape[0] == 3 and trainer.target(x_t, t).shape == x_t.shape
    assert len(trainer.train()) == 3


def test_second_run_hits_the_cache_and_save_load_paths_work(cache_dir, tmp_path, monkeypatch) -> None:
    cfg = esd_config(save_path=str(tmp_path / "esd.safetensors"))
    first = ESD(cfg, make_context(cache_dir))
    first.prepare()
    assert first.info["trained"] is True
    trained = {n: p.detach().clone() for n, p in first.pipeline().unet.named_parameters()}

    def no_training(self):
        raise AssertionError("ESD retrained although cached weights exist")

    monkeypatch.setattr(ESDTrainer, "train", no_training)
    second = ESD(esd_config(save_path=str(tmp_path / "esd.safetensors")), make_context(cache_dir))
    second.prepare()
    assert second.info["trained"] is False and second.weights_sha256 == first.weights_sha256
    assert all(torch.equal(p, trained[n]) for n, p in second.pipeline().unet.named_parameters())

    for suffix in (".safetensors", ".pt"):  # the seed page's save_path is a .pt file: a torch state dict
        path = tmp_path / f"copy{suffix}"
        ESD(esd_config(save_path=str(path)), make_context(cache_dir)).prepare()
        loaded = ESD(esd_config(load_path=str(path), use_cache=False), make_context(tmp_path / "empty"))
        loaded.prepare()
        assert loaded.info["weights_loaded_from"] == str(path) and loaded.weights_sha256 == first.weights_sha256
        assert all(torch.equal(p, trained[n]) for n, p in loaded.pipeline().unet.named_parameters())
    assert (tmp_path / "copy.pt").read_bytes()[:2] == b"PK"  # torch.save's zip format, not safetensors bytes

    # A plain UNet state dict (no component prefix), as the authors' releases ship them, loads as the UNet's.
    plain = {k.removeprefix("unet."): v for k, v in first.weights.items()}
    torch.save(plain, tmp_path / "plain.pt")
    from_release = ESD(esd_config(load_path=str(tmp_path / "plain.pt")), make_context(tmp_path / "empty"))
    from_release.prepare()
    assert all(torch.equal(p, trained[n]) for n, p in from_release.pipeline().unet.named_parameters())


def test_weights_key_follows_training_settings_only() -> None:
    key = ESD(esd_config(), make_context(None)).weights_key
    assert ESD(esd_config(train_steps=4), make_context(None)).weights_key() != key()
    assert ESD(esd_config(guidance_scale=3.0, save_path="x.pt"), make_context(None)).weights_key() == key()


def test_cache_key_follows_the_contents_of_local_weights(tmp_path) -> None:
    """Retrained weights in the same folder (as when the shipped MiniWorld is retrained) must miss the cache."""
    (tmp_path / "unet").mkdir()
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    content = bytearray(3 << 20)  # 3 MiB: the changed byte sits far from both ends of the file
    weights.write_bytes(content)
    model = resolve_model(str(tmp_path))
    context = RunContext(model=model, device="cpu", dtype=torch.float32, seed=0, cache_dir=tmp_path)
    before = ESD(esd_config(), context).weights_key()
    assert ESD(esd_config(), context).weights_key() == before
    content[len(content) // 2] = 1
    weights.write_bytes(content)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    assert ESD(esd_config(), context).weights_key() != before
    assert "weights" in resolve_model("miniworld").fingerprint()


def test_bad_esd_configs_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="did you mean 'train_method'|Did you mean 'train_method'"):
        from_mapping(ESDConfig, {"trian_method": "xattn"}, "esd")
    with pytest.raises(ConfigError, match="not one of"):
        from_mapping(ESDConfig, {"train_method": "attn"}, "esd")
    with pytest.raises(ConfigError, match="load_path"):
        from_mapping(ESDConfig, {"load_path": "/nonexistent/esd.safetensors"}, "esd")
    with pytest.raises(ConfigError, match="expected a number"):
        from_mapping(ESDConfig, {"learning_rate": "fast"}, "esd")
    with pytest.raises(ConfigError, match="learning_rate must be a finite number"):
        from_mapping(ESDConfig, {"learning_rate": float("inf")}, "esd")
    with pytest.raises(ConfigError, match="negative_guidance must be a finite number"):
        from_mapping(ESDConfig, {"negative_guidance": float("nan")}, "esd")
    with pytest.raises(ConfigError, match=r"save_path 'esd\.h5' must end in one of"):
        from_mapping(ESDConfig, {"save_path": "esd.h5"}, "esd")


def test_partial_samples_use_ddim_whatever_the_pipelines_scheduler(tiny_pipe) -> None:
    """SD-1.4 ships PNDM, a multistep scheduler whose history would leak from one partial sample into the next (and
    differ in a resumed run); ESD samples x_t with DDIM, as the authors' release does, so each x_t depends only on the
    generator's state: a fresh trainer given the state before the third sample draws the same third sample."""
    from diffusers import DDIMScheduler, PNDMScheduler

    tiny_pipe.scheduler = PNDMScheduler.from_config(tiny_pipe.scheduler.config)
    trainer = ESDTrainer(tiny_pipe, esd_config(), "cpu", 32, 32)
    assert isinstance(trainer.scheduler, DDIMScheduler)
    for _ in range(2):
        trainer.sample_xt()
    state = trainer.generator.get_state()
    third = trainer.sample_xt()
    fresh = ESDTrainer(tiny_pipe, esd_config(), "cpu", 32, 32)
    fresh.generator.set_state(state)
    again = fresh.sample_xt()
    assert torch.equal(third[0], again[0]) and third[1] == again[1]
