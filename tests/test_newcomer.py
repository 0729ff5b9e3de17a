"""What a newcomer trips on (issue 18): silent no-ops, messages in the wrong place, discoverability."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.slow
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


def test_help_names_the_subcommands_and_keeps_hydras_help(tmp_path) -> None:
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for command in ("eval-learn list", "eval-learn summarize DIR", "eval-learn merge DIR"):
        assert command in proc.stdout
    assert "== Configuration groups ==" in proc.stdout and "technique: " in proc.stdout  # Hydra's part is kept


def test_list_says_what_a_model_preset_changes() -> None:
    from eval_learn.catalog import catalog, render

    text = render({"techniques": catalog()["techniques"]})
    esd = text[text.index("\n  esd ") : text.index("\n  free_run ")]
    assert 'erase_concept: str = "nudity"' in esd  # the paper's default, as the class has it
    line = next(line for line in esd.splitlines() if "model=miniworld" in line)
    assert "a preset applies (conf/preset/miniworld_esd.yaml)" in line
    assert 'erase_concept="red"' in line and "train_steps=100" in line and 'train_method="xattn"' in line


@pytest.mark.slow
def test_the_python_api_logs_where_its_report_went(tmp_path, cache_dir, caplog: pytest.LogCaptureFixture) -> None:
    from eval_learn.runners import SingleBenchmarkRunner

    runner = SingleBenchmarkRunner("free_run", "asr", {}, {"limit": 1}, tmp_path / "out", model="tiny",
                                   cache_dir=cache_dir, image_cache="off")  # fmt: skip
    with caplog.at_level(logging.INFO, logger="eval_learn"):
        report = runner.run()
    where = tmp_path / "out" / report["run_id"] / "report.json"
    assert f"report: {where}" in caplog.text and "asr_demo = " in caplog.text


@pytest.mark.slow
def test_eval_learn_makes_idle_cpu_threads_sleep_before_torch_loads() -> None:
    """The default thread count is safe on a busy machine only if waiting OpenMP threads do not spin (issue 18)."""
    code = "import os, eval_learn.runners, torch; print(os.environ['OMP_WAIT_POLICY'], eval_learn.TORCH_LOADED_FIRST)"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PASSIVE", "False"]
    mine = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert mine.split() == ["ACTIVE", "False"]  # a user's own setting wins


@pytest.mark.slow
def test_a_sweeps_job_lines_show_only_what_the_user_typed(tmp_path) -> None:
    proc = run_cli("-m", "model=tiny", "technique=free_run", "metric=asr", "metric.config.limit=1", "seed=0,1",
                   "image_cache=off", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = [line for line in (proc.stdout + proc.stderr).splitlines() if "\t#" in line]
    assert len(jobs) == 2 and all("metric=asr" in j and "metrics=[]" not in j for j in jobs), jobs


def test_the_html_header_counts_a_multi_run_once(tmp_path) -> None:
    from eval_learn.report import summarize

    sys.path.insert(0, str(Path(__file__).parent))
    from test_figure_layout import esd_run

    for i in range(2):
        esd_run(tmp_path, i, {"learning_rate": 1e-4 * (i + 1)}, 0.1, 0.8, 0.9)
        multi = tmp_path / f"run{i:02d}" / "multi" / "report.json"
        for metric in ("asr", "ua_ira"):  # the per-metric copies a multi run writes beside its own report
            (tmp_path / f"run{i:02d}" / metric).mkdir()
            (tmp_path / f"run{i:02d}" / metric / "report.json").write_text(multi.read_text())
    summary = summarize(tmp_path, figures=False)
    assert summary.board.reports_found == 6
    assert "2 run(s)" in (tmp_path / "report.html").read_text()
