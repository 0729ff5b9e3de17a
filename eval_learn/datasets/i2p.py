"""Prompt sets in I2P's format: ``i2p`` (the hub copy or a local one, filtered by category), the UnlearnDiffAtk
nudity set ``unlearndiffatk_nudity`` (shipped), and the benign ``demo`` set (shipped, for offline runs on ``tiny``).

I2P (Schramowski et al., "Safe Latent Diffusion", CVPR 2023) gives every prompt its own seed and guidance scale and
one or more categories (sexual, violence, hate, harassment, self-harm, shocking, illegal activity).
``unlearndiffatk_nudity`` is the 142-prompt nudity set of the UnlearnDiffAtk release (Zhang et al., ECCV 2024;
MIT license, see ``eval_learn/data/prompts``): all of its rows, with no category filter, since 26 of them are not
labelled "sexual" in I2P although the protocol uses them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from eval_learn.datasets.base import PromptRow, PromptSet, PromptSetConfig
from eval_learn.datasets.tables import prompt_rows, read_table
from eval_learn.errors import ConfigError, RunError

I2P_REPO = "AIML-TUDA/i2p"
I2P_FILE = "i2p_benchmark.csv"
I2P_CATEGORIES = ("sexual", "violence", "hate", "harassment", "self-harm", "shocking", "illegal activity")
_OFFLINE_HELP = (
    "Offline, give a local copy in I2P's format (prompts={name: i2p, path: FILE} or metric.config.prompts_path=FILE: "
    "either keeps the concept's category, as the hub copy does; category: null keeps every row), or use a shipped set "
    "(prompts=unlearndiffatk_nudity, or prompts=demo on model=tiny)."
)


def bundled_prompts(name: str) -> Path:
    """A prompt file shipped inside the package (``eval_learn/data/prompts/<name>``)."""
    return Path(str(resources.files("eval_learn") / "data" / "prompts" / name))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


@dataclass
class I2PConfig(PromptSetConfig):
    category: str | None = None  # keep rows of this category (null: every row)
    path: str | None = None  # a local copy in I2P's format; null: the hub copy (AIML-TUDA/i2p)

    def validate(self) -> None:
        if self.category is not None and self.category not in I2P_CATEGORIES:
            from eval_learn.configs import did_you_mean

            raise ConfigError(
                f"category '{self.category}' is not an I2P category.{did_you_mean(self.category, I2P_CATEGORIES)} "
                f"Categories: {', '.join(I2P_CATEGORIES)}"
            )


class I2P(PromptSet):
    name = "i2p"
    config_cls = I2PConfig
    config: I2PConfig

    @classmethod
    def preflight(cls, config: I2PConfig) -> None:
        if config.path is not None:
            prompt_rows(read_table(config.path), category=config.category)
            return
        if _offline():
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(I2P_REPO, I2P_FILE, repo_type="dataset"), str):
                raise ConfigError(
                    f"The I2P prompts ({I2P_REPO}) are not in the local cache and HF_HUB_OFFLINE is set. {_OFFLINE_HELP}"
                )

    def _file(self) -> Path:
        if self.config.path is not None:
            return Path(self.config.path)
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(I2P_REPO, I2P_FILE, repo_type="dataset"))
        except Exception as err:  # noqa: BLE001 - any failure means "not reachable"
            raise RunError(f"Cannot fetch the I2P prompts from the hub ({I2P_REPO}: {type(err).__name__}). "
                           f"{_OFFLINE_HELP}") from None  # fmt: skip

    def rows(self) -> list[PromptRow]:
        rows = prompt_rows(read_table(self._file()), category=self.config.category)
        if not rows:
            raise ConfigError(
                f"I2P ({self.config.path or I2P_REPO}) has no prompts in category '{self.config.category}'"
            )
        return rows

    def metadata(self) -> dict[str, Any]:
        return {"source": self.config.path or f"hf://{I2P_REPO}", "category": self.config.category}


@dataclass
class BundledConfig(PromptSetConfig):
    pass


class Bundled(PromptSet):
    """A shipped file (``eval_learn/data/prompts/<file>``), used whole."""

    config_cls = BundledConfig
    file: str

    @classmethod
    def preflight(cls, config: PromptSetConfig) -> None:
        read_table(bundled_prompts(cls.file))

    def rows(self) -> list[PromptRow]:
        return prompt_rows(read_table(bundled_prompts(self.file)))

    def metadata(self) -> dict[str, Any]:
        return {"source": f"eval_learn/data/prompts/{self.file}", "category": None}


class UnlearnDiffAtkNudity(Bundled):
    name = "unlearndiffatk_nudity"
    file = "unlearndiffatk_nudity.csv"


class Demo(Bundled):
    name = "demo"
    file = "demo_i2p.csv"
