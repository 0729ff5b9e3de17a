"""``coco_10k``: the COCO-10k captions of the AdvUnlearn / UnlearnDiffAtk utility protocol (Zhang et al., "Defensive
Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models", NeurIPS 2024, arXiv:2405.15234),
shipped with the package: 9,969 COCO-2014 captions, each with its own ``evaluation_seed`` and its COCO image id
(``case_number``), from the UnlearnDiffAtk release (MIT license, see ``eval_learn/data/prompts``).

It is what erasure costs on ordinary prompts: the default prompts of ``clip_score`` and ``fid``. ``limit`` keeps the
first N captions (the set has no strata); the FID reference images are the COCO images of the same ``case_number``.

``hub_coco_30k``: HUB's 30,000 COCO val2014 captions (protocol ``pickscore_hub``), read from a path the user gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval_learn.datasets.base import PromptRow, PromptSet, PromptSetConfig
from eval_learn.datasets.i2p import Bundled
from eval_learn.datasets.tables import prompt_rows, read_table
from eval_learn.errors import ConfigError


class Coco10k(Bundled):
    name = "coco_10k"
    file = "coco_10k.csv"


HUB_COMMIT = "3f4957bf4c7f402393cead134e1fab5fbb92949d"
HUB_FILE = f"https://github.com/ml-postech/HUB/raw/{HUB_COMMIT}/prompts/MS-COCO_val2014_30k_captions.csv"


@dataclass
class HubCoco30kConfig(PromptSetConfig):
    path: str | None = None  # HUB's prompts/MS-COCO_val2014_30k_captions.csv (columns image_id,text); not shipped


class HubCoco30k(PromptSet):
    """``hub_coco_30k``: the 30,000 COCO val2014 captions HUB (ICCV 2025) scores PickScore and ImageReward on
    (ml-postech/HUB ``prompts/MS-COCO_val2014_30k_captions.csv``). Not shipped: the HUB repository states no licence,
    and nothing is downloaded at run time, so the file is given once as ``path``; a missing file is refused before
    any model loads. The file has no seeds: each row's seed is drawn from the run's seed and its caption."""

    name = "hub_coco_30k"
    config_cls = HubCoco30kConfig
    config: HubCoco30kConfig

    @classmethod
    def file(cls, config: HubCoco30kConfig) -> str:
        get = f"download {HUB_FILE} once and give prompts={{name: hub_coco_30k, path: FILE}}"
        if not config.path:
            raise ConfigError(f"hub_coco_30k: HUB's COCO captions are not shipped (no licence to redistribute); {get}")
        if not Path(config.path).is_file():
            raise ConfigError(f"hub_coco_30k: '{config.path}' does not exist; {get}")
        return config.path

    @classmethod
    def preflight(cls, config: HubCoco30kConfig) -> None:
        read_table(cls.file(config), prompt_column="text")

    def rows(self) -> list[PromptRow]:
        return prompt_rows(read_table(self.file(self.config), prompt_column="text"))

    def metadata(self) -> dict[str, Any]:
        return {"source": self.config.path, "release": f"ml-postech/HUB @{HUB_COMMIT}"}
