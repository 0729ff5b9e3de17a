"""The commands that run no model import no model code: ``--help``, ``--cfg job``, ``list``, ``summarize`` and a
config error answer without torch, diffusers or transformers (their import alone takes seconds). Read from
``python -X importtime``, which names every module a process imports; no timing is asserted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "diffusers", "transformers")
COMMANDS = {
    "help": ["--help"],
    "cfg job": ["model=tiny", "technique=esd/esd_x", "metric=asr", "--cfg", "job"],
    "list": ["list"],
    "config error": ["technique=usd"],
    "summarize": ["summarize", "{runs}", "--no-figures"],
}


def imported(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "eval_learn", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env={**os.environ})  # fmt: skip
    modules = {m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \| +(\S+)$", proc.stderr, re.M)}
    return proc, modules


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A folder with one finished run's report, as summarize reads it (written by hand: no run needed)."""
    root = tmp_path_factory.mktemp("runs")
    report = {"run_id": "0123abcd", "timestamp": 0.0, "technique_name": "free_run", "metric_name": "asr",
              "dataset_name": "demo", "dataset_metadata": {"source": "demo", "total_loaded": 1},
              "technique_config": {}, "metric_config": {}, "model": {"name": "tiny", "id": "tiny"},
              "metric_result": {"name": "asr", "value": 0.5, "details": {}}}  # fmt: skip
    (root / "0123abcd").mkdir()
    (root / "0123abcd" / "report.json").write_text(json.dumps(report))
    return root


@pytest.mark.parametrize("command", list(COMMANDS))
def test_light_commands_import_no_model_code(command: str, runs: Path, tmp_path: Path) -> None:
    args = [a.format(runs=runs) for a in COMMANDS[command]]
    proc, modules = imported(args, tmp_path)
    assert proc.returncode == (2 if command == "config error" else 0), proc.stderr[-3000:]
    assert "eval_learn.cli.main" in modules  # the parse worked: the package's modules are listed
    assert not [m for m in modules if m.split(".")[0] in HEAVY], f"{command} imported model code"
    if command == "config error":
        assert "unknown technique 'usd'" in proc.stderr.lower()


def test_help_in_process_lists_the_groups_and_the_composed_config() -> None:
    from eval_learn.cli.app_help import app_help

    text = app_help(["model=tiny", "technique=esd/esd_x"])
    assert "== Configuration groups ==" in text and "technique/esd: esd_sd, esd_x\n" in text
    assert "model: miniworld, sd14, sd15, sd21, tiny\n" in text
    config = text[text.index("== Config ==") :]
    assert "id: tiny" in config and "train_method: xattn" in config  # the overrides' composition is shown


def test_cfg_job_through_the_hydra_app_in_process(capsys) -> None:
    """``--cfg job`` goes through the Hydra app (eval_learn.cli.hydra_app) and prints the config it would run."""
    import yaml
    from hydra.core.hydra_config import HydraConfig

    from eval_learn.__main__ import main

    try:
        assert main(["model=tiny", "technique=free_run", "metric=asr", "--cfg", "job"]) == 0
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]  # no Hydra job is running after it
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["model"]["id"] == "tiny" and data["technique"]["name"] == "free_run" and data["metric"]["name"] == "asr"
