"""PickScore: the score on constructed embeddings by hand, the judge and metric against the release's calc_probs run
on a tiny random CLIPModel (tests/parity/golden/pickscore.json), the state contract, configuration and an end-to-end
run on the tiny model. The tiny CLIP is saved to a folder and loaded through the same from_pretrained path as
yuvalkirstain/PickScore_v1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_contract import check_metric_contract
from PIL import Image

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.judges.pickscore import PickScoreConfig, PickScoreJudge
from eval_learn.judges.tiny import write_tiny_clip
from eval_learn.metrics.mean_score import MeanScoreConfig
from eval_learn.metrics.pickscore import PickScore
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.types import PromptRecord

GOLDEN = json.loads((Path(__file__).parent / "parity" / "golden" / "pickscore.json").read_text())
PROMPTS = ["a red car", "a dog on a beach", "a church in the city", "a cat", "a painting of a tree"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> str:
    return str(write_tiny_clip(tmp_path_factory.mktemp("pickscore")))


def context() -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=None)


def make_metric(folder: str, **config) -> PickScore:
    judge = {"name": "pickscore", "model": folder, "processor": None}
    parsed = from_mapping(MeanScoreConfig, {"judge": judge, **config}, "pickscore")
    return PickScore(PickScore.resolve_config(parsed, context(), None), context())


def images(n: int) -> list[Image.Image]:
    return [Image.fromarray(np.random.RandomState(i).randint(0, 256, (40, 40, 3), dtype=np.uint8)) for i in range(n)]


def unit(*values: float) -> np.ndarray:
    vector = np.zeros(16)
    vector[: len(values)] = values
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def test_hand_computed_scores_on_constructed_embeddings(clip_folder) -> None:
    metric = make_metric(clip_folder)
    scale = math.exp(2.6592)  # CLIPConfig's initial logit_scale: the tiny model's is untrained
    assert metric.judges["judge"].logit_scale() == pytest.approx(scale, rel=1e-6)
    texts = {"t1": unit(0.6, 0.8), "t2": unit(-0.6, 0.8), "t3": unit(1.0)}  # cos 0.6, -0.6 (not clamped), 1
    metric._texts.update({text: (vector, False) for text, vector in texts.items()})
    for i, text in enumerate(texts):
        metric.judgements.add(i, metric.record({"judge": {"embedding": unit(1.0)}}, PromptRecord(i, text, i)))
    expected = [0.6 * scale, -0.6 * scale, scale]
    assert [r["score"] for r in metric.judgements.sorted()] == pytest.approx(expected, rel=1e-6)
    result = metric.compute()
    assert result.name == "pickscore_coco_10k" and result.value == pytest.approx(sum(expected) / 3, rel=1e-6)
    half = 4.302652729911275 * np.std(expected, ddof=1) / math.sqrt(3)  # t(0.975, 2) · s / √3
    assert result.details["ci95"] == pytest.approx([result.value - half, result.value + half], rel=1e-6)
    assert result.details["logit_scale"] == pytest.approx(scale, rel=1e-6)


def test_scores_match_the_release_calc_probs(clip_folder) -> None:
    """Every (prompt, image) score of the release's calc_probs on the same tiny CLIP, within 1e-5 (it embeds the
    five images in one batch, we one at a time); and its softmax over the five images from our scores."""
    metric = make_metric(clip_folder)
    for prompt in PROMPTS:
        metric.reset()
        metric.update(images(5), [PromptRecord(i, prompt, i) for i in range(5)])
        ours = [r["score"] for r in metric.judgements.sorted()]
        assert ours == pytest.approx(GOLDEN["scores"][prompt], abs=1e-5)
        probs = torch.softmax(torch.tensor(ours, dtype=torch.float64), -1).tolist()
        assert probs == pytest.approx(GOLDEN["probs"][prompt], abs=1e-6)


def test_batched_equals_whole_restores_and_shards(clip_folder, tmp_path) -> None:
    records = [PromptRecord(i, PROMPTS[i % 5], i) for i in range(5)]
    check_metric_contract(lambda: make_metric(clip_folder), images(5), records, tmp_path)


def test_settings_record_model_processor_and_preprocessing(clip_folder) -> None:
    settings = PickScoreJudge(PickScoreConfig(model=clip_folder, processor=clip_folder)).settings()
    assert settings["judge"] == "pickscore" and settings["model"] == clip_folder
    assert settings["processor"] == clip_folder and settings["processor_commit"] is None
    assert len(settings["weights_sha256"]["model.safetensors"]) == 64
    assert settings["image_preprocessing"]["resize"] == {"shortest_edge": 32, "resample": "bicubic"}
    assert "f79607ff" in settings["release"]
    defaults = PickScoreConfig()
    assert (defaults.model, defaults.processor) == (
        "yuvalkirstain/PickScore_v1",
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    )


def test_bad_configs_and_unavailable_weights(clip_folder, tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs the pickscore judge"):
        make_metric(clip_folder, judge="clip")
    with pytest.raises(ConfigError, match="'yuvalkirstain/PickScore_v1' is not a local folder"):
        SingleBenchmarkRunner("free_run", "pickscore", {}, {}, tmp_path, model="tiny")


def test_end_to_end_on_tiny(clip_folder, tmp_path, cache_dir) -> None:
    judge = {"name": "pickscore", "model": clip_folder, "processor": None}
    report = SingleBenchmarkRunner("free_run", "pickscore", {}, {"limit": 3, "judge": judge}, tmp_path,
                                   model="tiny", cache_dir=cache_dir).run()  # fmt: skip
    result = report["metric_result"]
    assert result["name"] == "pickscore_coco_10k" and result["higher_is_better"] is True
    assert result["details"]["n"] == 3 and len(result["details"]["ci95"]) == 2
    assert report["judge"]["judge"] == "pickscore" and report["judge"]["model"] == clip_folder
