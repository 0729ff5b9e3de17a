"""What a newcomer trips on (issue 18): silent no-ops, messages in the wrong place, discoverability."""

from __future__ import annotations

import logging

import pytest
from conftest import run_cli

from eval_learn.datasets.base import build_dataset
from eval_learn.datasets.miniworld import MiniWorldPrompts, MiniWorldPromptsConfig


@pytest.mark.parametrize(("limit", "warnings"), [(16, 1), (8, 1), (4, 0), (None, 0)])
def test_a_limit_that_keeps_every_prompt_says_so_once(caplog: pytest.LogCaptureFixture, limit, warnings) -> None:
    prompt_set = MiniWorldPrompts(MiniWorldPromptsConfig(concept="red"))  # 8 prompts
    with caplog.at_level(logging.WARNING):
        dataset = build_dataset(prompt_set, limit=limit, samples=8, base_seed=0)
    said = [r.getMessage() for r in caplog.records if "limit" in r.getMessage()]
    assert len(said) == warnings, said
    assert dataset.metadata["prompts"] == (8 if limit is None or limit >= 8 else limit)
    if warnings:
        assert f"limit {limit} keeps all 8 prompts of 'miniworld'" in said[0]


def test_a_model_that_cannot_load_offline_says_so_on_stderr_and_leaves_no_folder(tmp_path) -> None:
    proc = run_cli("model=sd14", "technique=free_run", "metric=asr", "metric.config.prompts=unlearndiffatk_nudity",
                   cwd=tmp_path, env={"HF_HOME": str(tmp_path / "empty_hf_home")})  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "eval-learn: error: Model 'CompVis/stable-diffusion-v1-4' cannot be loaded" in proc.stderr
    assert "cannot be loaded" not in proc.stdout and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()  # no folder holding only .hydra and a log


@pytest.mark.slow
def test_a_run_file_with_its_own_output_dir_makes_no_outputs_folder(tmp_path) -> None:
    run_file = tmp_path / "run.yaml"
    run_file.write_text("technique: {name: free_run, config: {}}\nmetric: {name: asr, config: {limit: 1}}\n"
                        f"model: tiny\nimage_cache: 'off'\noutput_dir: {tmp_path / 'mine'}\n")  # fmt: skip
    proc = run_cli(str(run_file), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()
    (report,) = (tmp_path / "mine").glob("*/report.json")
    saved = report.parent / ".hydra" / "config.yaml"  # the saved config and the log sit beside the report
    assert saved.is_file() and (report.parent / "eval_learn.log").is_file()
    assert "output_dir" in saved.read_text()
