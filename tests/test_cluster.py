"""Sweeps through Hydra's launchers: the SLURM config composes with its overridable fields and passes the app's
pre-validation; a local sweep through the joblib launcher (two processes) ends with a leaderboard."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import run_cli

from eval_learn.errors import ConfigError

SLURM = "-m hydra/launcher=slurm hydra.launcher.partition=gpu technique=free_run,esd metric=asr"


def check(line: str) -> None:
    """The checks the app runs on a command line before Hydra starts (what would end with exit code 2)."""
    from eval_learn.cli.arguments import parse_overrides, single_metric_overrides
    from eval_learn.cli.precheck import check_group_choices, check_override_keys, validate_jobs

    argv = single_metric_overrides(line.split())
    overrides = parse_overrides(argv)
    assert overrides is not None
    check_group_choices(argv, overrides)
    check_override_keys(argv, overrides)
    validate_jobs(argv, overrides, None)


def test_slurm_launcher_composes_with_its_fields_and_passes_validation() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from eval_learn.compose import register_schema
    from eval_learn.models import CONF_DIR

    fields = {"partition": "gpu", "gpus_per_node": 2, "timeout_min": 30, "mem_gb": 64, "cpus_per_task": 4}
    register_schema()  # what the config starts from
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", *(f"hydra.launcher.{k}={v}" for k, v in
                                                                    fields.items())], return_hydra_config=True)  # fmt: skip
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert {k: launcher[k] for k in fields} == fields
    assert cfg.hydra.callbacks.leaderboard._target_ == "eval_learn.report.callback.LeaderboardCallback"
    check(SLURM)  # hydra/launcher and hydra.launcher.* are left to Hydra
    check(SLURM.replace("slurm", "joblib", 1) + " hydra.launcher.n_jobs=2")
    with pytest.raises(ConfigError, match="unknown hydra/launcher 'slrum'. Did you mean 'slurm'"):
        check(SLURM.replace("slurm", "slrum"))
    from eval_learn.cli.arguments import single_metric_overrides

    # `--cfg hydra` (to see every launcher field) after metric=X: Hydra takes no override after the flag
    assert single_metric_overrides([*SLURM.split(), "--cfg", "hydra"])[-3:] == ["metrics=[]", "--cfg", "hydra"]


@pytest.mark.slow
def test_local_sweep_through_the_joblib_launcher_ends_with_a_leaderboard(tmp_path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=tiny",
                   "technique=free_run,negative_prompt", "metric=asr", "metric.config.limit=1",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = sorted(sweep.glob("*/*/report.json"))
    assert len(reports) == 2
    rows = list(csv.DictReader(io.StringIO((sweep / "leaderboard.csv").read_text())))
    assert sorted(r["technique"] for r in rows) == ["free_run", "negative_prompt"]
    for row in rows:  # each row holds the value its run reported
        (report,) = [json.loads(p.read_text()) for p in reports if p.parent.name == row["runs"]]
        assert float(row["asr_demo ↓"]) == report["metric_result"]["value"] and row["asr_demo n"] == "1"
    assert "| negative_prompt | tiny | nudity |" in (sweep / "leaderboard.md").read_text()
    page = (sweep / "report.html").read_text()
    assert "<table>" in page and "data:image/png;base64," in page
    assert "Leaderboard: " in proc.stdout + proc.stderr  # the callback said where the table is
