"""The run's own settings, defined once: here.

The Python API (the runners' keyword arguments), the run config (``conf/config.yaml`` builds on this dataclass
through Hydra's ConfigStore, so ``python -m eval_learn --cfg job`` shows these defaults), seed-format run files and
the report all read this one definition. A new setting is one field here (and a line in the README's table).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval_learn.configs import require
from eval_learn.errors import ConfigError

IMAGE_CACHE_MODES = ("on", "off", "read_only")


@dataclass
class ShardSettings:
    """Split one run into ``count`` jobs: this one makes and judges image i of each metric's set when
    i % count == index; ``eval-learn merge`` combines the jobs' saved metric states into the unsplit value."""

    index: int = 0
    count: int = 1

    def validate(self) -> None:
        require(self.count >= 1, f"shard.count must be a positive integer, got {self.count}")
        require(0 <= self.index < self.count, f"shard.index must be in [0, {self.count}), got {self.index}")

    def keeps(self, index: int) -> bool:
        return index % self.count == self.index


@dataclass
class RunSettings:
    seed: int = 0  # base seed: a prompt without its own seed gets seed + a number drawn from its text (+ j for sample j)
    batch_size: int = 8  # prompts generated, judged and written together (and rows per pipeline call)
    # null: exact where it is cheap (CPU: every call padded to batch_size rows, bit-identical whatever the
    # neighbours; CUDA: one call per batch); true: one prompt per call, identical for any batch size on any device;
    # false: one unpadded call per batch everywhere.
    batch_invariant: bool | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 elsewhere) | float32 | float16 | bfloat16
    cache_dir: str | None = None  # technique weights, images, judgements; null: $EVAL_LEARN_CACHE or ~/.cache/eval_learn
    image_cache: Any = "on"  # on | off | read_only: the image and judgement store
    image_cache_max_gb: float | None = 50.0  # least recently used entries beyond this are removed; null: no bound
    num_threads: int | None = None  # torch CPU threads (null: torch's default); 1 on a small, busy machine
    shard: ShardSettings = field(default_factory=ShardSettings)  # index/count: this job's part of a split run

    def validate(self) -> None:
        require(isinstance(self.seed, int) and 0 <= self.seed < 2**64,
                f"seed must be an integer in [0, 2**64), got {self.seed!r}")  # fmt: skip
        require(self.batch_size >= 1, f"batch_size must be a positive integer, got {self.batch_size!r}")
        require(self.num_threads is None or self.num_threads >= 1,
                f"num_threads must be a positive integer, got {self.num_threads}")  # fmt: skip
        self.image_cache = cache_mode(self.image_cache)
        if self.image_cache_max_gb is not None:
            require(math.isfinite(self.image_cache_max_gb) and self.image_cache_max_gb > 0,
                    f"image_cache_max_gb must be a positive number or null, got {self.image_cache_max_gb}")  # fmt: skip
        if self.cache_dir is not None:
            require(bool(str(self.cache_dir).strip()), "cache_dir must not be empty (null: the default)")
            check_writable(Path(self.cache_dir), "cache_dir")

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        return Path(os.environ.get("EVAL_LEARN_CACHE", Path.home() / ".cache" / "eval_learn"))


def cache_mode(value: Any) -> str:
    """YAML reads ``on``/``off`` as booleans; both spellings mean the same."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    if value not in IMAGE_CACHE_MODES:
        raise ConfigError(f"image_cache must be one of {', '.join(IMAGE_CACHE_MODES)}, got {value!r}")
    return value


def check_writable(path: Path, key: str) -> None:
    """``path`` exists as a writable folder, or can be created: its nearest existing ancestor is a writable folder."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{key} '{path}': '{probe}' is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} '{path}' cannot be written ('{probe}' is not writable)")


@dataclass
class RunConfigSchema(RunSettings):
    """The whole run config as Hydra composes it (``conf/config.yaml`` fills the groups)."""

    technique: Any = None
    metric: Any = None
    metrics: Any = None
    model: Any = "sd14"
    output_dir: str = "results"
