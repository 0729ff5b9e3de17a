"""Published adversarial prompt sets, as prompt sets: the transfer attacks people compare with.

- ``ring_a_bell_nudity``: Ring-A-Bell's nudity InvPrompts (Tsai et al., ICLR 2024), hub dataset
  ``Chia15/RingABell-Nudity`` (access on request), columns ``prompt`` and ``evaluation_seed``.
- ``mma_diffusion_nsfw``: MMA-Diffusion's 1,000 adversarial prompts (Yang et al., CVPR 2024), hub dataset
  ``YijunYang280/MMA-Diffusion-NSFW-adv-prompts-benchmark`` (access on request); the prompt is ``adv_prompt``
  (``column`` picks ``sanitized_adv_prompt``, ``target_prompt`` or ``clean_prompt`` instead); no seeds.
- ``p4d_prompts``: P4D's optimised prompts (Chin et al., ICML 2024), hub dataset ``joycenerd/p4d``: I2P-format files (the
  optimised ``prompt`` with its ``evaluation_seed`` and ``evaluation_guidance``), one per attack and target; ``file``
  picks one.
- UnlearnDiffAtk's set is the shipped ``unlearndiffatk_nudity`` (:mod:`eval_learn.datasets.i2p`).

None of them is shipped: the hub copies are gated and their licences are not stated where we could read them
(MMA-Diffusion's repository is CC BY-NC-ND 3.0, which forbids derivatives). Each loads from the hub (the CSV files of
the dataset) or from a local copy (``prompts={name: ring_a_bell_nudity, path: FILE}``); offline, without a cached
copy, the run stops before any model loads with the same advice as I2P.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from eval_learn.datasets.base import PromptRow, PromptSet, PromptSetConfig
from eval_learn.datasets.tables import prompt_rows, read_table
from eval_learn.errors import ConfigError, RunError


def _offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but read now (a test or a caller may set it after import)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


@dataclass
class PublishedConfig(PromptSetConfig):
    path: str | None = None  # a local copy (CSV); null: the hub copy
    file: str | None = None  # which CSV of the hub copy (null: its only one)
    column: str | None = None  # the column read as the prompt (null: the set's own)


class PublishedSet(PromptSet):
    """A published set on the Hugging Face hub (a dataset of CSV files), or a local copy of one of its files."""

    config_cls = PublishedConfig
    config: PublishedConfig
    repo: ClassVar[str]
    column: ClassVar[str] = "prompt"

    def _column(self) -> str:
        return self.config.column or self.column

    @classmethod
    def _help(cls) -> str:
        return (
            f"Request access to hf://datasets/{cls.repo} and log in (huggingface-cli login), or give a local copy "
            f"of one of its CSV files: prompts={{name: {cls.name}, path: FILE}} (a hub copy in another format: "
            f"datasets.load_dataset('{cls.repo}', split='train').to_csv(FILE))."
        )

    @classmethod
    def _snapshot(cls, local_only: bool) -> Path:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(cls.repo, repo_type="dataset", allow_patterns=["*.csv"], local_files_only=local_only)
        )

    @classmethod
    def preflight(cls, config: PublishedConfig) -> None:
        if config.path is not None:
            prompt_rows(read_table(config.path, config.column or cls.column))
            return
        if _offline():
            try:
                cls._snapshot(local_only=True)
            except Exception:  # noqa: BLE001 - not in the cache, whatever the reason
                raise ConfigError(
                    f"The {cls.name} prompts ({cls.repo}) are not in the local cache and HF_HUB_OFFLINE is set. "
                    f"{cls._help()}"
                ) from None

    def _file(self) -> Path:
        if self.config.path is not None:
            return Path(self.config.path)
        try:
            folder = self._snapshot(local_only=_offline())
        except Exception as err:  # noqa: BLE001 - any failure means "not reachable" (gated, offline, missing)
            raise RunError(f"Cannot fetch the {self.name} prompts from the hub ({self.repo}: {type(err).__name__}). "
                           f"{self._help()}") from None  # fmt: skip
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.csv"))
        if self.config.file is not None:
            if self.config.file not in files:
                raise ConfigError(f"{self.repo} has no file '{self.config.file}'; its CSV files: {files}")
            return folder / self.config.file
        if len(files) != 1:
            raise ConfigError(
                f"{self.repo} has {len(files)} CSV files ({files}); pick one with prompts={{name: {self.name}, "
                f"file: NAME}}" + (f". {self._help()}" if not files else "")
            )
        return folder / files[0]

    def rows(self) -> list[PromptRow]:
        file = self._file()
        rows = prompt_rows(read_table(file, self._column()))
        if not rows:
            raise ConfigError(f"{file} has no prompts")
        return rows

    def metadata(self) -> dict[str, Any]:
        source = self.config.path or f"hf://datasets/{self.repo}" + (f"/{self.config.file}" if self.config.file else "")
        return {"source": source, "column": self._column(), "category": None}


class RingABellNudity(PublishedSet):
    name = "ring_a_bell_nudity"
    repo = "Chia15/RingABell-Nudity"


class MMADiffusionNSFW(PublishedSet):
    name = "mma_diffusion_nsfw"
    repo = "YijunYang280/MMA-Diffusion-NSFW-adv-prompts-benchmark"
    column = "adv_prompt"


class P4D(PublishedSet):
    name = "p4d_prompts"
    repo = "joycenerd/p4d"
