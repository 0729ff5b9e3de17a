"""A renamed technique key on the command line works as it does from the Python API: with one deprecation line."""

from __future__ import annotations

import logging
from pathlib import Path

from eval_learn.cli.arguments import renamed_technique_keys
from eval_learn.cli.main import main

DEPRECATED = "technique.config.batch_size is deprecated, use technique.config.train_batch_size"


def _deprecations(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


def test_the_old_key_sets_the_new_one_with_one_deprecation_line(caplog, capsys) -> None:
    args = ["model=tiny", "technique=esd", "technique.config.batch_size=3", "--cfg", "job"]
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    job = capsys.readouterr().out
    assert "train_batch_size: 3" in job and "\n    batch_size:" not in job
    assert [m.split(" (")[0] for m in _deprecations(caplog)] == [DEPRECATED]
    # a run file's keys come as ++key=value; other keys and flags are left alone
    assert renamed_technique_keys(["++technique.config.batch_size=2", "batch_size=4", "+technique.config.x=1"]) == [
        "++technique.config.train_batch_size=2", "batch_size=4", "+technique.config.x=1"]  # fmt: skip


def test_a_deprecation_is_said_once_though_every_job_builds_its_runner(caplog, capsys, tmp_path: Path) -> None:
    """``+technique.config.batch_size`` reaches the technique's config, where the API's deprecation applies: the
    pre-check builds the runner of each job (two valid ones here, then a wrong one that stops the command), and the
    line is said once."""
    sweep = ["-m", "model=tiny", "technique=esd", "+technique.config.batch_size=2", "metric=asr", "batch_size=1,2,0",
             f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert main(sweep) == 2
    assert "batch_size=0: run config: batch_size must be a positive integer" in capsys.readouterr().err
    assert len(_deprecations(caplog)) == 1
    assert "'batch_size' is deprecated, use 'train_batch_size'" in _deprecations(caplog)[0]
    assert not (tmp_path / "sweep").exists()
