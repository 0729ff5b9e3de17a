"""The aesthetic judge and metric: the MLP by hand on constructed weights, parity with the release's
simple_inference.py on a tiny random CLIP (tests/parity/golden/aesthetic.json), the weights file checks, the state
contract and an end-to-end run on the tiny model. Weights are made in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_contract import check_metric_contract
from PIL import Image
from torch import nn

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.judges.aesthetic import AestheticConfig, AestheticJudge
from eval_learn.judges.tiny import write_tiny_clip
from eval_learn.metrics.aesthetic import Aesthetic
from eval_learn.metrics.mean_score import MeanScoreConfig
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.types import PromptRecord

GOLDEN = json.loads((Path(__file__).parent / "parity" / "golden" / "aesthetic.json").read_text())


def release_layout(inputs: int) -> nn.Sequential:
    """The release MLP's module order (dropouts included, so the state dict keys are layers.0/2/4/6/7)."""
    return nn.Sequential(nn.Linear(inputs, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))  # fmt: skip


def save_state(module: nn.Module, path: Path) -> str:
    torch.save({f"layers.{k}": v for k, v in module.state_dict().items()}, path)
    return str(path)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> str:
    return str(write_tiny_clip(tmp_path_factory.mktemp("clip")))


@pytest.fixture(scope="module")
def seeded_weights(tmp_path_factory) -> str:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # as the golden file's release run made them
        return save_state(release_layout(16), tmp_path_factory.mktemp("mlp") / "seed0.pth")


def context() -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=None)


def make_metric(folder: str, weights: str, **config) -> Aesthetic:
    judge = {"name": "aesthetic", "model": folder, "weights": weights}
    parsed = from_mapping(MeanScoreConfig, {"judge": judge, **config}, "aesthetic")
    return Aesthetic(Aesthetic.resolve_config(parsed, context(), None), context())


def images(n: int) -> list[Image.Image]:
    return [Image.fromarray(np.random.RandomState(i).randint(0, 256, (40, 40, 3), dtype=np.uint8)) for i in range(n)]


def test_hand_computed_score(clip_folder, tmp_path) -> None:
    """One path through the MLP: x0 → 1 → 1 → 1 → 2·(.) + 5, so an embedding (3, 4, 0, ...) scores 2·0.6 + 5."""
    mlp = release_layout(16)
    with torch.no_grad():
        for module in mlp:
            if isinstance(module, nn.Linear):
                module.weight.zero_()
                module.bias.zero_()
                module.weight[0, 0] = 1.0
        mlp[7].weight[0, 0], mlp[7].bias[0] = 2.0, 5.0
    judge = AestheticJudge(AestheticConfig(model=clip_folder, weights=save_state(mlp, tmp_path / "path.pth")))
    embedding = np.zeros(16, dtype=np.float32)
    embedding[:2] = (3.0, 4.0)  # not normalised: the judge normalises as the release does
    (verdict,) = judge.judge_from_parts({"clip": [{"embedding": embedding}]})
    assert verdict["aesthetic"] == pytest.approx(2 * 0.6 + 5, abs=1e-12)


def test_scores_match_the_release_on_the_tiny_clip(clip_folder, seeded_weights) -> None:
    metric = make_metric(clip_folder, seeded_weights)
    metric.update(images(5), [PromptRecord(i, "a cat", i) for i in range(5)])
    ours = [r["score"] for r in metric.judgements.sorted()]
    assert ours == pytest.approx(GOLDEN["scores"], abs=1e-6)  # the release runs the MLP in float32, we in float64
    result = metric.compute()
    assert result.value == pytest.approx(np.mean(GOLDEN["scores"]), abs=1e-6) and result.details["n"] == 5
    low, high = result.details["ci95"]
    assert low < result.value < high


def test_batched_equals_whole_restores_and_shards(clip_folder, seeded_weights, tmp_path) -> None:
    records = [PromptRecord(i, "a cat", i) for i in range(5)]
    check_metric_contract(lambda: make_metric(clip_folder, seeded_weights), images(5), records, tmp_path)


def test_weights_are_checked_and_recorded(clip_folder, seeded_weights, tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs the predictor's weights"):
        make_metric(clip_folder, None)
    with pytest.raises(ConfigError, match="not a file"):
        make_metric(clip_folder, str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="not the release MLP's"):
        make_metric(clip_folder, save_state(nn.Sequential(nn.Linear(16, 1)), tmp_path / "other.pth"))
    (tmp_path / "code.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        make_metric(clip_folder, str(tmp_path / "code.pth"))
    from safetensors.torch import save_file

    state = {f"layers.{k}": v.contiguous() for k, v in release_layout(16).state_dict().items()}
    save_file(state, str(tmp_path / "mlp.safetensors"))
    settings = AestheticJudge(AestheticConfig(model=clip_folder, weights=str(tmp_path / "mlp.safetensors"))).settings()
    assert (
        settings["judge"] == "aesthetic" and len(settings["weights_sha256"]) == 64 and "6934dd81" in settings["release"]
    )
    assert settings["model"] == clip_folder and settings["image_preprocessing"]["images_per_forward"] == 1
    # A predictor for another CLIP width is refused on the first image, not silently run.
    wide = save_state(release_layout(768), tmp_path / "wide.pth")
    with pytest.raises(Exception, match="take 768 numbers"):
        make_metric(clip_folder, wide).update(images(1), [PromptRecord(0, "a cat", 0)])


@pytest.mark.slow
def test_end_to_end_on_tiny_reuses_the_clip_embedding(clip_folder, seeded_weights, tmp_path, cache_dir) -> None:
    judge = {"name": "aesthetic", "model": clip_folder, "weights": seeded_weights}
    report = SingleBenchmarkRunner("free_run", "aesthetic", {}, {"limit": 3, "judge": judge}, tmp_path,
                                   model="tiny", cache_dir=cache_dir).run()  # fmt: skip
    result = report["metric_result"]
    assert result["name"] == "aesthetic_coco_10k" and result["higher_is_better"] is True
    assert result["details"]["n"] == 3 and len(result["details"]["ci95"]) == 2
    assert report["judge"]["judge"] == "aesthetic" and report["judge"]["weights"] == seeded_weights
    # The CLIP embeddings are the clip judge's cached verdicts: clip_score on the same images reuses all three.
    clip = {"name": "clip", "model": clip_folder}
    again = SingleBenchmarkRunner("free_run", "clip_score", {}, {"limit": 3, "judge": clip, "scale": "cosine"},
                                  tmp_path / "clip", model="tiny", cache_dir=cache_dir).run()  # fmt: skip
    assert again["cache_stats"] == {"images_generated": 0, "images_reused": 3, "judgements_reused": 3}
