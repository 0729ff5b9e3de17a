"""The engine: one plan for all metrics, resume after kill -9, a failing metric does not take the others down,
faults (full disk, concurrent runs) lose nothing and never pass as results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eval_learn.engine.requests import make_plan
from eval_learn.engine.run import MetricsFailed
from eval_learn.errors import RunError
from eval_learn.metrics.asr import ASR
from eval_learn.registry import METRICS
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner
from eval_learn.types import PromptRecord

SETTINGS = {"guidance_scale": 5.0, "num_inference_steps": 10, "height": 64, "width": 64}


def test_identical_requests_of_two_metrics_are_planned_once() -> None:
    a = [PromptRecord(0, "a cat", 1), PromptRecord(1, "a dog", 2)]
    b = [PromptRecord(0, "a dog", 2), PromptRecord(1, "a dog", 2, guidance_scale=7.0), PromptRecord(2, "a cat", 9)]
    plan = make_plan({"a": a, "b": b}, SETTINGS)
    assert len(plan.requests) == 4 and plan.asked == 5
    assert plan.wanted["b"][0][1] == plan.wanted["a"][1][1]  # the same image
    assert plan.users()[1] == [("a", a[1]), ("b", b[0])]
    # Grouped by guidance (one pipeline call each), then in the order they were asked for.
    assert [(r.prompt, r.guidance_scale) for r in plan.requests] == [("a cat", 5.0), ("a dog", 5.0), ("a cat", 5.0),
                                                                     ("a dog", 7.0)]  # fmt: skip


def prompt_file(folder: Path, n: int) -> Path:
    path = folder / "prompts.csv"
    path.write_text("prompt,sd_seed\n" + "".join(f"a photo of a house number {i},{100 + i}\n" for i in range(n)))
    return path


def cli(*args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "eval_learn", *args]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_where_it_stopped(tmp_path) -> None:
    prompts = prompt_file(tmp_path, 24)
    args = ["model=tiny", "technique=free_run", "metric=asr", f"metric.config.prompts_path={prompts}",
            "batch_size=4"]  # fmt: skip
    cache = tmp_path / "cache"
    env = {**os.environ, "EVAL_LEARN_CACHE": str(cache)}
    killed = subprocess.Popen(cli(*args, f"hydra.run.dir={tmp_path / 'killed'}", cwd=tmp_path), cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while len(list(cache.glob("images/*/*.png"))) < 8 and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done_before = len(list(cache.glob("images/*/*.png")))
    assert 8 <= done_before < 24, done_before
    (status,) = (tmp_path / "killed").glob("*/run_status.json")
    assert json.loads(status.read_text())["status"] == "running"  # visibly unfinished
    assert not list((tmp_path / "killed").glob("*/report.json"))
    assert not list(cache.rglob("*.tmp"))  # nothing half-written looks finished

    resumed = subprocess.run(cli(*args, f"hydra.run.dir={tmp_path / 'resumed'}", cwd=tmp_path), cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (report_path,) = (tmp_path / "resumed").glob("*/report.json")
    report = json.loads(report_path.read_text())
    assert report["cache_stats"]["images_generated"] == 24 - done_before  # only what was missing
    assert report["cache_stats"]["images_reused"] == done_before

    clean_env = {**os.environ, "EVAL_LEARN_CACHE": str(tmp_path / "clean_cache")}
    clean = subprocess.run(cli(*args, f"hydra.run.dir={tmp_path / 'clean'}", cwd=tmp_path), cwd=tmp_path,
                           env=clean_env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert clean.returncode == 0, clean.stderr[-2000:]
    (clean_path,) = (tmp_path / "clean").glob("*/report.json")
    uninterrupted = json.loads(clean_path.read_text())
    assert report["metric_result"] == uninterrupted["metric_result"]
    assert report["metric_state"] == uninterrupted["metric_state"]
    images = {p.name: p.read_bytes() for p in (report_path.parent / "images").glob("*.png")}
    assert images == {p.name: p.read_bytes() for p in (clean_path.parent / "images").glob("*.png")}


class FailingASR(ASR):
    """An ASR whose judging raises on the third image: a stand-in for any metric that breaks mid-run."""

    name = "failing_asr"

    def record(self, verdicts, record):
        if record.index == 2:
            raise RuntimeError("the judge fell over")
        return super().record(verdicts, record)


@pytest.fixture
def failing_metric(monkeypatch):
    monkeypatch.setitem(METRICS._targets, "failing_asr", FailingASR)  # registered for this test only
    return "failing_asr"


@pytest.mark.slow
def test_a_metric_that_raises_does_not_lose_the_others(tmp_path, cache_dir, failing_metric) -> None:
    runner = MultiBenchmarkRunner("free_run", ["asr", failing_metric], {}, {"asr": {"limit": 4},
                                  failing_metric: {"limit": 4}}, output_dir=tmp_path, model="tiny",
                                  cache_dir=cache_dir, batch_size=2)  # fmt: skip
    with pytest.raises(MetricsFailed, match="1 of 2 metric.*failing_asr.*the judge fell over") as caught:
        runner.run()
    combined = caught.value.report
    root = tmp_path / combined["run_id"]
    assert (root / "asr" / "report.json").is_file()  # the good metric's results are written
    assert not (root / failing_metric / "report.json").exists()  # the failed one does not look finished
    error = json.loads((root / failing_metric / "error.json").read_text())
    assert error["type"] == "RuntimeError" and "the judge fell over" in error["traceback"]
    on_disk = json.loads((root / "multi" / "report.json").read_text())
    assert list(on_disk["metric_results"]) == ["asr"] and failing_metric in on_disk["failed_metrics"]
    assert json.loads((root / "run_status.json").read_text())["failed_metrics"] == [failing_metric]
    # The two metrics asked for the same four images: rendered once, judged once.
    assert on_disk["cache_stats"]["images_generated"] == 4 and on_disk["cache_stats"]["images_requested"] == 8


def test_a_full_disk_mid_run_stops_with_a_message_and_leaves_nothing_half_written(tmp_path, cache_dir,
                                                                                  monkeypatch) -> None:  # fmt: skip
    import errno

    import eval_learn.storage as storage

    real = storage.os.replace
    calls = {"n": 0}

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] > 6 and str(dst).endswith(".png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(storage.os, "replace", replace)
    runner = SingleBenchmarkRunner("free_run", "asr", {}, {"limit": 8}, tmp_path, model="tiny", cache_dir=cache_dir,
                                   batch_size=2)  # fmt: skip
    with pytest.raises(RunError, match="no space left on the disk while writing .*png.*run the same command again"):
        runner.run()
    assert not list(tmp_path.rglob("*.tmp")) and not list(cache_dir.rglob("*.tmp"))
    assert all(p.stat().st_size > 0 for p in tmp_path.rglob("*.png"))
    assert not list(tmp_path.rglob("report.json"))
    (status,) = tmp_path.glob("*/run_status.json")
    assert json.loads(status.read_text())["status"] == "failed"


@pytest.mark.slow
def test_two_runs_of_the_same_config_at_once_train_once(tmp_path) -> None:
    env = {**os.environ, "EVAL_LEARN_CACHE": str(tmp_path / "cache")}
    args = ["model=tiny", "technique=esd", "metric=asr", "metric.config.limit=4", "batch_size=4"]
    procs = [subprocess.Popen(cli(*args, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path), cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    reports = [json.loads(next((tmp_path / name).glob("*/report.json")).read_text()) for name in ("a", "b")]
    assert sorted(r["technique_info"]["trained"] for r in reports) == [False, True]  # one trained, one waited
    assert sorted(r["cache_stats"]["images_generated"] for r in reports) == [0, 4]  # and one rendered
    assert reports[0]["metric_state"] == reports[1]["metric_state"]
    assert reports[0]["technique_info"]["weights_sha256"] == reports[1]["technique_info"]["weights_sha256"]


class ModelProbe(ASR):
    """A metric that asks for the model under test, as an adversarial attack would: it back-propagates through the
    technique's UNet and text encoder for each image's prompt and records the gradient norm."""

    name = "model_probe"
    needs_model = True

    def record(self, verdicts, record):
        pipe = self.technique.pipeline()
        ids = pipe.tokenizer(record.prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids  # fmt: skip
        with torch.enable_grad():
            embeddings = pipe.text_encoder(ids)[0]
            latents = torch.zeros(1, pipe.unet.config.in_channels, 8, 8, requires_grad=True)
            out = pipe.unet(latents, torch.tensor([10]), encoder_hidden_states=embeddings).sample
            out.square().mean().backward()
        grads = [p.grad for p in pipe.text_encoder.parameters() if p.grad is not None]
        pipe.unet.zero_grad(set_to_none=True)
        pipe.text_encoder.zero_grad(set_to_none=True)
        return {**super().record(verdicts, record), "latent_grad": float(latents.grad.norm()),
                "text_encoder_grads": len(grads)}  # fmt: skip


def test_a_metric_that_needs_the_model_gets_the_technique_with_gradients(tmp_path, cache_dir, monkeypatch) -> None:
    monkeypatch.setitem(METRICS._targets, "model_probe", ModelProbe)  # registered for this test only
    report = SingleBenchmarkRunner("esd", "model_probe", {"train_steps": 2, "sample_steps": 2}, {"limit": 2},
                                   tmp_path, model="tiny", cache_dir=cache_dir).run()  # fmt: skip
    records = report["metric_state"]["judgements"].values()
    assert all(r["latent_grad"] > 0 and r["text_encoder_grads"] > 0 for r in records)
