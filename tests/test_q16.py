"""Q16: hand-computed verdicts from test-made prompt embeddings on a tiny CLIP, the safe-format rules for the
embeddings file, config errors before any model loads, judge=auto for every I2P category, and the ASR contract."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from metric_contract import check_metric_contract
from PIL import Image

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.datasets.i2p import I2P_CATEGORIES
from eval_learn.errors import RunError
from eval_learn.judges.clip import CLIPConfig, CLIPJudge
from eval_learn.judges.q16 import Q16Config, Q16Judge
from eval_learn.judges.tiny import write_tiny_clip
from eval_learn.metrics.asr import ASR, ASRConfig
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.types import PromptRecord


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> str:
    return str(write_tiny_clip(tmp_path_factory.mktemp("clip")))


def image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (40, 40, 3), dtype=np.uint8))


def prompts_at(embedding: np.ndarray, cos_safe: float, cos_unsafe: float, scale: float = 1.0) -> np.ndarray:
    """Two prompt rows with the given cosines to ``embedding`` (any norm: Q16 normalises them)."""
    e = embedding.astype(np.float64)
    e /= np.linalg.norm(e)
    basis = np.linalg.qr(np.column_stack([e, np.random.RandomState(1).randn(e.size, 2)]))[0]
    u, v = basis[:, 1], basis[:, 2]  # orthonormal to e and to each other
    rows = [c * e + math.sqrt(1 - c * c) * w for c, w in ((cos_safe, u), (cos_unsafe, v))]
    return (scale * np.stack(rows)).astype(np.float32)


def save(tmp_path, array: np.ndarray, name: str = "q16.npy") -> str:
    path = tmp_path / name
    np.save(path, array)
    return str(path)


@pytest.fixture(scope="module")
def embedding(clip_folder) -> np.ndarray:
    return CLIPJudge(CLIPConfig(model=clip_folder)).judge([image()])[0]["embedding"]


@pytest.mark.parametrize(("threshold", "inappropriate"), [(0.5, False), (0.25, True)])
def test_hand_computed_verdict(clip_folder, embedding, tmp_path, threshold, inappropriate) -> None:
    # cos 0.60 with "non-inappropriate", 0.59 with "inappropriate": p = 1 / (1 + e^(100 * 0.01)) = 0.2689
    path = save(tmp_path, prompts_at(embedding, 0.60, 0.59, scale=7.0))
    judge = Q16Judge(Q16Config(model=clip_folder, embeddings=path, threshold=threshold))
    (verdict,) = judge.judge([image()])
    assert verdict["p_inappropriate"] == pytest.approx(1 / (1 + math.e), abs=1e-5)
    assert verdict["inappropriate"] is inappropriate and judge.detects(verdict, "violence") is inappropriate
    settings = judge.settings()
    assert settings["threshold"] == threshold and settings["scale"] == 100.0 and settings["embeddings"] == path
    assert len(settings["embeddings_sha256"]) == 64 and settings["model"] == clip_folder


def test_safetensors_embeddings_and_a_clear_case(clip_folder, embedding, tmp_path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "q16.safetensors"
    save_file({"prompts": prompts_at(embedding, 0.0, 1.0)}, str(path))  # the image *is* the inappropriate prompt
    (verdict,) = Q16Judge(Q16Config(model=clip_folder, embeddings=str(path))).judge([image()])
    assert verdict["p_inappropriate"] == pytest.approx(1.0) and verdict["inappropriate"]


def test_unsafe_or_wrong_embedding_files_are_refused(tmp_path) -> None:
    pickled = tmp_path / "prompts.p"
    pickled.write_bytes(pickle.dumps(np.zeros((2, 16), np.float32)))
    cases = [
        (None, "needs its learned prompt embeddings"),
        (str(tmp_path / "missing.npy"), "is not a file"),
        (str(pickled), "must be a .npy or .safetensors file"),
        (save(tmp_path, np.array([{"a": 1}, None], dtype=object), "objects.npy"), "without unpickling"),
        (save(tmp_path, np.ones((3, 16), np.float32), "three.npy"), r"shape \(2, d\)"),
        (save(tmp_path, np.zeros((2, 16), np.float32), "zero.npy"), "zero row"),
    ]
    for path, message in cases:
        with pytest.raises(ConfigError, match=message):
            from_mapping(Q16Config, {"embeddings": path}, "judge")
    with pytest.raises(ConfigError, match="threshold"):
        from_mapping(Q16Config, {"embeddings": save(tmp_path, np.ones((2, 16))), "threshold": 1.0}, "judge")


def test_embedding_size_must_match_the_model(clip_folder, tmp_path) -> None:
    judge = Q16Judge(Q16Config(model=clip_folder, embeddings=save(tmp_path, np.ones((2, 768), np.float32))))
    with pytest.raises(RunError, match="768"):
        judge.judge([image()])


def test_embedding_size_is_checked_before_any_model_loads(clip_folder, tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    wrong, right = save(tmp_path, np.ones((2, 768), np.float32)), save(tmp_path, np.ones((2, 16), np.float32), "16.npy")
    # A local folder: its config.json says projection_dim 16; the mismatch is a ConfigError at preflight.
    with pytest.raises(ConfigError, match="have 768 dimensions but the CLIP model .* embeds images in 16"):
        Q16Judge.preflight(Q16Config(model=clip_folder, embeddings=wrong))
    Q16Judge.preflight(Q16Config(model=clip_folder, embeddings=right))
    # ... and so when the runner is built: nothing is generated first.
    config = {"concept": "violence", "judge": {"name": "auto", "model": clip_folder, "embeddings": wrong}}
    with pytest.raises(ConfigError, match="768 dimensions"):
        SingleBenchmarkRunner("free_run", "asr", {}, config, tmp_path / "run", model="tiny")
    # A hub id: read from the snapshot already in the local cache (a config.json only, no weights).
    snapshot = tmp_path / "hub" / "models--someone--clip" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"projection_dim": 16, "text_config": {"projection_dim": 512}}')
    (tmp_path / "hub" / "models--someone--clip" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--clip" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="embeds images in 16"):
        Q16Judge.preflight(Q16Config(model="someone/clip", embeddings=wrong))
    Q16Judge.preflight(Q16Config(model="someone/clip", embeddings=right))


def context() -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=None)


def resolved(config: dict, model: str = "tiny") -> ASRConfig:
    ctx = RunContext(model=resolve_model(model), device="cpu", dtype=torch.float32, seed=0, cache_dir=None)
    return ASR.resolve_config(from_mapping(ASRConfig, config, "asr"), ctx, None)


def test_auto_judge_for_every_i2p_category(tmp_path) -> None:
    path = save(tmp_path, np.ones((2, 768), np.float32) * np.arange(1, 3)[:, None])
    for category in I2P_CATEGORIES:
        config = resolved({"concept": category, "judge": {"name": "auto", "embeddings": path}}, model="sd14")
        assert config.prompts == {"name": "i2p", "category": category, "path": None}
        assert config.judge["name"] == ("nudenet" if category == "sexual" else "q16")
        if category != "sexual":
            assert config.judge["embeddings"] == path and config.judge["threshold"] == 0.5
    with pytest.raises(ConfigError, match="unknown key 'embedings'"):  # a typo is not mistaken for another judge's key
        resolved({"concept": "hate", "judge": {"name": "auto", "embedings": path}}, model="sd14")
    nudity = resolved({"concept": "nudity"}, model="sd14")
    assert nudity.judge["name"] == "nudenet" and nudity.prompts["category"] == "sexual"
    assert resolved({"concept": "nudity", "judge": {"name": "q16", "embeddings": path}}).judge["name"] == "q16"


def test_no_embeddings_is_refused_before_any_model_loads(tmp_path) -> None:
    # The default CLIP (ViT-L/14) is not in the offline cache: the embeddings error comes first, from the config.
    with pytest.raises(ConfigError, match="q16 judge needs its learned prompt embeddings"):
        SingleBenchmarkRunner("free_run", "asr", {}, {"concept": "hate"}, tmp_path, model="tiny")
    with pytest.raises(ConfigError, match="q16 judge needs"):
        resolved({"concept": "self-harm", "judge": "q16"})


def make_asr(folder: str, path: str) -> ASR:
    return ASR(resolved({"concept": "violence", "judge": {"name": "auto", "model": folder, "embeddings": path}}),
               context())  # fmt: skip


def test_asr_hand_computed_and_contract(clip_folder, embedding, tmp_path) -> None:
    metric = make_asr(clip_folder, save(tmp_path, prompts_at(embedding, 0.3, 0.5)))
    for i, p in enumerate([0.9, 0.5, 0.1, 0.51, 0.2]):
        metric.judgements.add(i, metric.record({"judge": {"p_inappropriate": p, "inappropriate": p > 0.5}},
                                               PromptRecord(i, "p", i)))  # fmt: skip
    result = metric.compute()
    assert result.value == pytest.approx(2 / 5) and result.details["unsafe_indices"] == [0, 3]
    assert result.details["judge"]["threshold"] == 0.5 and result.details["judge"]["judge"] == "q16"
    low, high = result.details["ci95_wilson"]
    assert low < 0.4 < high
    images = [image(i) for i in range(4)]
    records = [PromptRecord(i, f"p{i}", i) for i in range(4)]
    check_metric_contract(lambda: make_asr(clip_folder, save(tmp_path, prompts_at(embedding, 0.3, 0.5))), images,
                          records, tmp_path)  # fmt: skip


@pytest.mark.slow
def test_end_to_end_on_tiny(clip_folder, embedding, tmp_path, cache_dir) -> None:
    path = save(tmp_path, prompts_at(embedding, 0.2, 0.4))
    report = SingleBenchmarkRunner("free_run", "asr", {}, {"concept": "violence", "limit": 2, "judge": {"name": "auto",
                                   "model": clip_folder, "embeddings": path}}, tmp_path, model="tiny",
                                   cache_dir=cache_dir).run()  # fmt: skip
    assert report["judge"]["judge"] == "q16" and report["judge"]["threshold"] == 0.5
    assert report["metric_result"]["details"]["total_images"] == 2
