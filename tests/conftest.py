"""Shared fixtures. Everything runs offline, on CPU, with one torch thread (two threads on a busy two-core machine
slow the tiny pipeline from 0.3 s to 15 s per image)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["EVAL_LEARN_CACHE"] = tempfile.mkdtemp(prefix="eval_learn_test_cache_")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def no_hydra_job_after_a_test():
    """A test that runs the Hydra app in this process leaves Hydra's job config set, and protocol look-ups then read
    that job's search path: clear it after every test, so no test depends on which ran before it in its process."""
    yield
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None  # type: ignore[assignment]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A fresh technique-weight cache, so that a test sees training happen (or not) by itself."""
    path = tmp_path / "cache"
    path.mkdir()
    return path


def run_cli(
    *args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m eval_learn ARGS`` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "eval_learn", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def tiny_pipe():
    from eval_learn.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


FAST_ESD = {"train_steps": 3, "sample_steps": 4}


def unrun_modules() -> list[str]:
    """The package's modules that no test of this process has imported (their code never ran here)."""
    import pkgutil

    import eval_learn

    names = {m.name for m in pkgutil.walk_packages(eval_learn.__path__, "eval_learn.")}
    return sorted(n for n in names if n not in sys.modules)


WORKER_MODULES: set[str] = set()  # with pytest-xdist (-n 2): the package's modules each worker's tests imported


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    WORKER_MODULES.update(getattr(node, "workeroutput", {}).get("eval_learn_modules", ()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The fast tier (``-m "not slow"`` over the whole of tests/) must still run every module of the package: a
    module whose only tests were marked slow fails the run here, by name. Under pytest-xdist each worker reports the
    modules it imported and the controller checks their union."""
    config = session.config
    if hasattr(config, "workerinput"):
        config.workeroutput["eval_learn_modules"] = sorted(n for n in sys.modules if n.startswith("eval_learn."))
        return
    whole = all(Path(a).resolve() == ROOT / "tests" for a in config.args) if config.args else True
    if config.getoption("markexpr") != "not slow" or not whole or exitstatus != 0 or config.option.collectonly:
        return
    missing = [name for name in unrun_modules() if name not in WORKER_MODULES]
    if missing:
        sys.stderr.write(f"\nThe fast tier ran no code of these modules (give each a fast test): {missing}\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
