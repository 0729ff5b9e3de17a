"""Bad input: a clear ValueError at construction, before any model (pipeline or judge) loads."""

from __future__ import annotations

import pytest
from conftest import DATA

import eval_learn.judges.nudenet as nudenet_judge
import eval_learn.techniques.base as technique_base
from eval_learn.app import build_runner
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner


@pytest.fixture(autouse=True)
def forbid_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the input was invalid")

    monkeypatch.setattr(technique_base, "load_pipeline", refuse)
    monkeypatch.setattr(nudenet_judge.NudeNetJudge, "load", refuse)


def single(**kwargs):
    args = {"technique_name": "free_run", "metric_name": "asr", "model": "tiny", "output_dir": "unused"}
    return SingleBenchmarkRunner(**{**args, **kwargs})


def test_unknown_technique_suggests_the_closest_name() -> None:
    with pytest.raises(ValueError, match=r"Unknown technique 'esdd'\. Did you mean 'esd'\?"):
        single(technique_name="esdd")
    with pytest.raises(ValueError, match=r"Unknown metric 'asrr'\. Did you mean 'asr'"):
        single(metric_name="asrr")


def test_typo_in_a_config_key() -> None:
    with pytest.raises(ValueError, match=r"unknown key 'trian_method'\. Did you mean 'train_method'"):
        single(technique_name="esd", technique_config={"trian_method": "xattn"})
    with pytest.raises(ValueError, match=r"unknown key 'limt'\. Did you mean 'limit'"):
        single(metric_config={"limt": 3})
    with pytest.raises(ValueError, match=r"unknown key 'sed'\. Did you mean 'seed'"):
        build_runner({"technique": {"name": "free_run"}, "metric": {"name": "asr"}, "sed": 1})


def test_incompatible_pair() -> None:
    with pytest.raises(ValueError, match="Incompatible pair technique 'esd' × metric 'asr'.*erases \\['van gogh'\\]"):
        single(
            technique_name="esd", technique_config={"erase_concept": "van gogh"}, metric_config={"concept": "nudity"}
        )
    with pytest.raises(ValueError, match="'pizza' has no judge yet"):
        single(technique_name="esd", technique_config={"erase_concept": "pizza"})
    with pytest.raises(ValueError, match="'openai/clip-vit-large-patch14' is not a local folder"):  # style: CLIP judge
        single(technique_name="esd", technique_config={"erase_concept": "van gogh"})
    with pytest.raises(ValueError, match="ua_ira measures MiniWorld concepts"):
        single(metric_name="ua_ira")  # on model=tiny
    runner = single(technique_name="esd", technique_config={"erase_concept": "nudity"})  # the matching pair is fine
    assert runner.metric.config.concept == "nudity"  # concept: auto follows the technique


def test_i2p_without_prompts_path_offline_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="I2P prompts .* not in the local cache.*prompts_path"):
        single(metric_config={"prompts": "i2p"})


def test_prompt_file_problems() -> None:
    with pytest.raises(ValueError, match="no 'prompt' column"):
        single(metric_config={"prompts_path": str(DATA / "no_prompt_column.csv")})
    with pytest.raises(ValueError, match="does not exist"):
        single(metric_config={"prompts_path": str(DATA / "nope.csv")})


@pytest.mark.parametrize("limit", [0, -3])
def test_non_positive_limit(limit) -> None:
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        single(metric_config={"limit": limit})


def test_impossible_run_settings() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        single(batch_size=0)
    with pytest.raises(ValueError, match="unknown key 'batch_sise'. Did you mean 'batch_size'"):
        single(batch_sise=2)
    with pytest.raises(ValueError, match="num_threads must be a positive integer"):
        build_runner({"technique": {"name": "free_run"}, "metric": {"name": "asr"}, "num_threads": 0})
    with pytest.raises(ValueError, match="Unknown model 'tinny'.*Did you mean 'tiny'"):
        single(model="tinny")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            single(device="cuda")


def test_multi_runner_rules() -> None:
    with pytest.raises(ValueError, match="duplicate metric names"):
        MultiBenchmarkRunner("free_run", ["asr", "asr_i2p"], model="tiny")
    with pytest.raises(ValueError, match="non-empty"):
        MultiBenchmarkRunner("free_run", [], model="tiny")
    with pytest.raises(ValueError, match="both 'metric'"):
        build_runner({"technique": {"name": "free_run"}, "metric": {"name": "asr"}, "metrics": [{"name": "asr"}]})


def test_real_model_offline_fails_before_the_judge_loads_and_names_the_offline_models(tmp_path) -> None:
    # HF_HUB_OFFLINE=1 in tests; the weights are not in the local cache here
    runner = single(model="sd14", metric_config={"prompts": "demo"}, output_dir=tmp_path / "out")
    with pytest.raises(RuntimeError, match="CompVis/stable-diffusion-v1-4.*offline model: tiny"):
        runner.run()
    assert not (tmp_path / "out").exists()  # nothing left behind


def run_config(**overrides):
    return {"technique": {"name": "free_run"}, "metric": {"name": "asr"}, "model": "tiny", "output_dir": "out",
            **overrides}  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*64\)"),
        ({"seed": 2**64}, r"seed must be an integer in \[0, 2\*\*64\)"),
        ({"output_dir": ""}, "output_dir must name a folder"),
        ({"output_dir": __file__ + "/results"}, "is a file, not a folder"),
        ({"device": "mps"}, "this torch build cannot use it"),
        ({"device": "cuda:7"}, "CUDA"),
        ({"image_cache": "sometimes"}, "image_cache must be one of on, off, read_only"),
        ({"image_cache_max_gb": 0}, "image_cache_max_gb must be a positive number"),
        (
            {"technique": {"name": "free_run", "config": {"guidance_scale": float("nan")}}},
            "guidance_scale must be a finite",
        ),
        ({"technique": {"name": "free_run", "config": {"guidance_scale": -1.0}}}, "guidance_scale must be a finite"),
        ({"model": {"name": "x", "id": "tiny", "guidance_scale": float("inf")}}, "guidance_scale must be a finite"),
        ({"technique": {"name": "esd", "config": {"save_path": "w.h5"}}}, "must end in one of .safetensors"),
        ({"metric": {"name": "asr", "config": {"device": "cuda"}}}, "CUDA is not available"),
    ],
)
def test_impossible_values_are_refused_before_any_model_loads(overrides, message) -> None:
    import torch

    if "cuda" in str(overrides) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=message):
        build_runner(run_config(**overrides))


def test_the_metrics_device_setting_reaches_its_judge() -> None:
    runner = build_runner(run_config(metric={"name": "asr", "config": {"device": "cpu"}}, device="cpu"))
    from eval_learn.metrics.asr import ASR

    metric = ASR(runner.metric.config, runner.context)
    assert metric.device == "cpu" and metric.judges["judge"].device == "cpu"
