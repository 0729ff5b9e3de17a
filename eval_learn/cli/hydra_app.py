"""The Hydra app: one job of ``python -m eval_learn`` (a run, or one job of a sweep), from composed config to
report, and the folder Hydra made for it tidied."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from eval_learn.cli.arguments import full_error
from eval_learn.compose import register_schema
from eval_learn.errors import EvalLearnError
from eval_learn.models import CONF_DIR
from eval_learn.report import callback as leaderboard_callback
from eval_learn.storage import atomic_write

FAILURES: list[EvalLearnError] = []  # errors of jobs in this process (a sweep runs its jobs one after another)

register_schema()
OmegaConf.register_new_resolver("unique_run", lambda: os.urandom(3).hex(), use_cache=True, replace=True)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    # Model code is imported here, when a job runs: --help, --cfg, list, summarize and config errors never pay for it.
    from eval_learn.app import build_runner
    from eval_learn.runtime import quiet_libraries

    quiet_libraries()
    try:
        runner = build_runner(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        _record_device_and_dtype(runner.context.device, runner.context.dtype)
        report = runner.run()
    except EvalLearnError as err:
        if full_error():
            raise
        print(f"eval-learn: error: {err}", file=sys.stderr)  # where config errors go too, not Hydra's stdout log
        FAILURES.append(err)
        _tidy_hydra_folder(None)
        return None
    _tidy_hydra_folder(runner.output_dir / report["run_id"])
    result = report.get("metric_result")
    return result["value"] if result else None


def _tidy_hydra_folder(run_folder: Path | None) -> None:
    """Leave no folder holding only Hydra's saved config and log: when the run's results went elsewhere (its own
    ``output_dir``), those move into the run's folder beside its report; after a failure with no results, they go."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.RUN:
        return  # a sweep's job folders belong to the sweep
    folder = Path(hydra_cfg.runtime.output_dir).resolve()
    if run_folder is not None and folder in run_folder.resolve().parents or not folder.is_dir():
        return
    hydra_files = {hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log"}
    if not {p.name for p in folder.iterdir()} <= hydra_files:
        return
    if run_folder is not None and run_folder.is_dir():
        for name in hydra_files:
            if name and (folder / name).exists() and not (run_folder / name).exists():
                shutil.move(folder / name, run_folder / name)
    shutil.rmtree(folder, ignore_errors=True)
    for parent in (folder.parent, folder.parent.parent):  # outputs/<date>/ and outputs/, when nothing else is there
        if parent != Path.cwd().resolve() and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def _record_device_and_dtype(device: str, dtype: Any) -> None:
    """Write the device and dtype actually used into the saved ``.hydra/config.yaml`` (in place of ``auto``), so that
    rerunning it elsewhere reproduces the precision, or says that it cannot (``device: cuda`` on a machine without)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    if not hydra_cfg.output_subdir:
        return
    path = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir / "config.yaml"
    if not path.is_file():
        return
    saved = OmegaConf.load(path)
    saved.device = device
    saved.dtype = str(dtype).removeprefix("torch.")
    atomic_write(path, OmegaConf.to_yaml(saved).encode())


INJECTED = " metrics=[]"  # what single_metric_overrides adds
JOB_LINE_LOGGERS = ("hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_joblib_launcher._core")


class HideInjected(logging.Filter):
    """A sweep lists each job's overrides: the ``metrics=[]`` that ``metric=X`` implies is not one the user typed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("\t#"):
            record.msg = record.msg.replace(INJECTED, "")
        return True


def run(argv: list[str], hide_injected: bool) -> int:
    """Run Hydra's app on ``argv`` (already checked); the exit code of its jobs."""
    if hide_injected:
        for name in JOB_LINE_LOGGERS:
            logging.getLogger(name).addFilter(HideInjected())
    leaderboard_callback.UNFINISHED.clear()
    sys.argv = [sys.argv[0], *argv]
    hydra_main()
    # Jobs that a launcher ran in other processes (joblib, submitit) fail there: the leaderboard callback saw them.
    codes = [err.exit_code for err in FAILURES] + ([1] if leaderboard_callback.UNFINISHED else [])
    return max(codes, default=0)
