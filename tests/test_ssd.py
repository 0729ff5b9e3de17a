"""SSD: the paper's dampening rule leaves every unselected parameter bit-identical and only shrinks the selected ones;
importances are the release's mean squared batch gradients; the technique runs, caches and resumes on model=tiny;
bad settings fail before any model loads."""

from __future__ import annotations

import pytest
import torch

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.runtime import RunContext
from eval_learn.techniques.base import Technique
from eval_learn.techniques.checkpoint import TrainingCheckpoint
from eval_learn.techniques.ssd import SSD, SSDConfig, SSDEstimator, dampen, importance
from tests.conftest import ROOT, run_cli

FAST = {"erase_concept": "red", "retain_prompts": ["a blue car", "a green house"], "images_per_prompt": 2,
        "image_steps": 2, "train_batch_size": 2, "passes": 2}  # fmt: skip


def test_unselected_parameters_are_bit_identical_and_dampened_ones_only_shrink() -> None:
    g = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(200, generator=g), "b": torch.randn(5, 7, generator=g)}
    forget = {k: torch.rand(v.shape, generator=g) for k, v in params.items()}
    original = {k: torch.rand(v.shape, generator=g) for k, v in params.items()}
    forget["a"][:10] = 0.0  # never selected, whatever alpha
    before = {k: v.clone() for k, v in params.items()}
    alpha, lam = 1.5, 2.0
    counts = dampen(params, forget, original, alpha, lam)
    for k, p in params.items():
        selected = forget[k] > alpha * original[k]
        assert counts.get(k, 0) == int(selected.sum()) > 0
        assert torch.equal(p[~selected], before[k][~selected])  # bit-identical
        assert (p[selected].abs() <= before[k][selected].abs()).all()  # only shrinks ...
        assert (torch.sign(p[selected]) * torch.sign(before[k][selected]) >= 0).all()  # ... never flips
        factor = torch.clamp(lam * original[k][selected] / forget[k][selected], max=1.0)
        assert torch.allclose(p[selected], before[k][selected] * factor)  # by exactly min(lambda F_D / F_f, 1)
    assert torch.equal(params["a"][:10], before["a"][:10])


def test_a_parameter_with_no_retain_importance_is_zeroed() -> None:
    params = {"w": torch.tensor([2.0, -3.0])}
    dampen(params, {"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([0.0, 1.0])}, 0.5, 1.0)
    assert params["w"].tolist() == [0.0, -3.0]  # 1 > 0.5 * 0: factor 0; 1 > 0.5 * 1: factor min(1, 1) = 1


def test_importance_is_the_sum_of_squared_batch_gradients() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    sums, n = importance({"w": w}, [lambda: (w * torch.tensor([1.0, 0.0])).sum() * 3, lambda: (w**2).sum()])
    assert n == 2 and sums["w"].tolist() == [9.0 + 4.0, 0.0 + 16.0]


def test_forget_batches_then_the_whole_data(tiny_pipe) -> None:
    cfg = from_mapping(SSDConfig, {**FAST, "passes": 1}, "ssd")
    estimator = SSDEstimator(tiny_pipe, cfg, "cpu", 64, 64)
    estimator.render()
    batches = estimator.batches()
    forget = [b for w, b in batches if w == "forget"]
    original = [b for w, b in batches if w == "original"]
    prompt_of = estimator.images.prompt_of
    assert all(int(prompt_of[i]) == 0 for b in forget for i in b) and sum(map(len, forget)) == 2
    assert sorted(i for b in original for i in b) == list(range(6))  # D = retain + forget images
    retain_only = SSDEstimator(tiny_pipe, from_mapping(SSDConfig, {**FAST, "importance_data": "retain"}, "ssd"),
                               "cpu", 64, 64)  # fmt: skip
    retain_only.images = estimator.images
    assert all(int(prompt_of[i]) != 0 for w, b in retain_only.batches() if w == "original" for i in b)


def context(cache) -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=cache)


def test_ssd_changes_only_dampened_tensors_and_caches_them(tmp_path) -> None:
    technique = SSD(from_mapping(SSDConfig, FAST, "ssd"), context(tmp_path))
    technique.prepare()
    assert technique.info["trained"] and 0 < technique.info["dampened_entries"] < technique.info["unet_entries"]
    assert len(technique.weights) == technique.info["dampened_tensors"]
    from eval_learn.models.tiny import build_tiny_pipeline

    base = dict(build_tiny_pipeline().unet.named_parameters())
    for name, tensor in technique.weights.items():
        old = base[name.removeprefix("unet.")].detach()
        assert not torch.equal(tensor, old) or not old.any()
        assert (tensor.abs() <= old.abs()).all()
    again = SSD(from_mapping(SSDConfig, FAST, "ssd"), context(tmp_path))
    again.prepare()
    assert not again.info["trained"] and again.weights_sha256 == technique.weights_sha256


class Killed(Exception):
    """Stands in for a kill: raised right after a save, so the next run finds exactly that state on disk."""


def kill_then_resume(build, tmp_path, monkeypatch, render_owner: type) -> tuple[Technique, Technique]:
    """A clean run, a run killed after its third saved step, and the rerun that resumes it (which must not render
    the training images again): returns (clean, resumed)."""
    clean = build(tmp_path / "clean")
    clean.prepare()
    monkeypatch.setattr(Technique, "checkpoint_every_s", 0.0)
    save = TrainingCheckpoint.maybe_save

    def save_then_die(self, step, state, force=False):
        save(self, step, state, True)
        if step == 3:
            raise Killed

    monkeypatch.setattr(TrainingCheckpoint, "maybe_save", save_then_die)
    with pytest.raises(Killed):
        build(tmp_path / "killed").prepare()
    monkeypatch.setattr(TrainingCheckpoint, "maybe_save", save)
    monkeypatch.setattr(render_owner, "render", lambda self: pytest.fail("the images were saved: not rendered again"))
    resumed = build(tmp_path / "killed")
    resumed.prepare()
    assert resumed.info["training_resumed_from_step"] == 3
    assert resumed.weights_sha256 == clean.weights_sha256  # bit for bit
    assert not list((tmp_path / "killed").rglob("*.pt"))
    return clean, resumed


@pytest.mark.slow
def test_a_killed_ssd_resumes_and_ends_with_the_same_weights(tmp_path, monkeypatch) -> None:
    kill_then_resume(lambda cache: SSD(from_mapping(SSDConfig, FAST, "ssd"), context(cache)), tmp_path, monkeypatch,
                     SSDEstimator)  # fmt: skip


def test_bad_ssd_configs_fail_clearly() -> None:
    for fields, message in (({"selection_weighting": 0}, "selection_weighting must be a finite number > 0"),
                            ({"dampening_constant": float("nan")}, "dampening_constant must be"),
                            ({"retain_prompts": []}, "retain_prompts must be a non-empty list"),
                            ({"forget_prompts": []}, "forget_prompts must be null or non-empty"),
                            ({"importance_data": "forget"}, "not one of"),
                            ({"passes": 0}, "passes must be > 0")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            from_mapping(SSDConfig, fields, "ssd")


@pytest.mark.slow
def test_a_bad_ssd_setting_exits_2_before_any_model_loads(tmp_path) -> None:
    proc = run_cli("model=tiny", "technique=ssd", "technique.config.selection_weighting=-1", "metric=asr",
                   f"hydra.run.dir={tmp_path}", cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "selection_weighting must be a finite number > 0" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
