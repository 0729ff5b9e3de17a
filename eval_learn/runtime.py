"""Device, dtype, cache location and the environment facts a report records."""

from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from eval_learn.configs import ConfigError
from eval_learn.models.spec import ModelSpec
from eval_learn.settings import RunSettings

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | None) -> str:
    """``auto`` → CUDA when present, else CPU. Asking for CUDA on a machine without it is an error, not a fallback."""
    device = device or "auto"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device '{device}' was requested but CUDA is not available on this machine; use device=auto or cpu"
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' was requested but this torch build cannot use it; use device=auto or cpu")
    if device not in {"cpu", "mps"} and not device.startswith("cuda"):
        raise ConfigError(f"device '{device}' is not one of auto, cpu, cuda, cuda:N, mps")
    if device.startswith("cuda:"):
        index = device.partition(":")[2]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise ConfigError(f"device '{device}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """``auto`` → fp16 on CUDA (the field's standard for SD inference), fp32 elsewhere."""
    dtype = dtype or "auto"
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


@dataclass
class RunContext:
    """What techniques and metrics share within one run."""

    model: ModelSpec
    device: str
    dtype: torch.dtype
    seed: int
    cache_dir: Path
    settings: RunSettings = field(default_factory=RunSettings)


def package_version(package: str) -> str | None:
    """The installed version of ``package``, or None when it is not installed."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@cache
def _environment() -> dict[str, Any]:
    from eval_learn import __version__

    packages = ["torch", "diffusers", "transformers", "hydra-core", "nudenet", "onnxruntime", "numpy", "pillow"]
    env: dict[str, Any] = {
        "eval_learn": __version__,
        "git_sha": _git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {p: package_version(p) for p in packages},
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def environment() -> dict[str, Any]:
    """Library versions and hardware: what a reader needs to reproduce or distrust a number (looked up once)."""
    return copy.deepcopy(_environment())


def peak_memory(device: str) -> dict[str, float | None]:
    import resource

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"cpu_max_rss_mb": round(rss_kb / 1024, 1), "cuda_max_allocated_mb": cuda}


def quiet_libraries() -> None:
    """Off: the notices every run would print (torchvision and accelerate hints, weight-loading progress bars) —
    they say nothing about the run. Real warnings stay. For command-line entry points, not for library use."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
