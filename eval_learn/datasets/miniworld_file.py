"""``miniworld_csv``: a researcher's own prompt file on the MiniWorld (``prompts={name: miniworld_csv, path: FILE}``,
or ``metric.config.prompts_path=FILE`` on a MiniWorld concept).

The MiniWorld judge reads colour, shape and background from any image, so any wording can be measured once each row
says what it asks for: in ``colour`` (or ``color``), ``shape`` and ``background`` columns, or, where a row leaves them
empty, from the world's own words in the prompt ("a red circle on a striped background"). A row whose request
cannot be told (no column and none of the world's words, two colours named, a value the world does not have) is
refused by its line, before any model loads; every other row is used. Seeds and guidance scales are read as in any
prompt file (:mod:`eval_learn.datasets.tables`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval_learn.configs import require
from eval_learn.datasets.base import PromptRow, PromptSet, PromptSetConfig
from eval_learn.datasets.tables import prompt_rows, read_table
from eval_learn.errors import ConfigError
from eval_learn.miniworld.world import BACKGROUNDS, COLOURS, SHAPES, concept_kind

VALUES = {"colour": tuple(COLOURS), "shape": SHAPES, "background": BACKGROUNDS}
COLUMNS = {"colour": ("colour", "color"), "shape": ("shape",), "background": ("background",)}
SHOWN = 5  # refused rows named in the message


@dataclass
class MiniWorldCSVConfig(PromptSetConfig):
    path: str = ""
    concept: str = "red"  # the concept measured: each row is tagged with it (the judge looks for it in every image)

    def validate(self) -> None:
        require(
            bool(self.path), "the miniworld_csv prompt set needs a path (prompts={name: miniworld_csv, path: FILE})"
        )
        require(
            concept_kind(self.concept) is not None, f"'{self.concept}' is not a MiniWorld colour, shape or background"
        )


def requested(prompt: str, columns: dict[str, str]) -> tuple[dict[str, str | None], str | None]:
    """What a row asks for (colour, shape, background; None where it says nothing) and why it cannot be judged."""
    words = re.findall(r"[a-z]+", prompt.lower())
    out: dict[str, str | None] = {}
    for attribute, values in VALUES.items():
        given = next((columns[c].strip().lower() for c in COLUMNS[attribute] if (columns.get(c) or "").strip()), None)
        if given is not None:
            if given not in values:
                return out, f"{attribute} '{given}' is not one of the world's ({', '.join(values)})"
            out[attribute] = given
            continue
        named = sorted({w for w in words if w in values})
        if len(named) > 1:
            return out, f"the prompt names {len(named)} {attribute}s ({', '.join(named)}): give a '{attribute}' column"
        out[attribute] = named[0] if named else None
    if not any(out.values()):
        return out, "neither its columns nor its words name a colour, shape or background of the world"
    return out, None


class MiniWorldCSV(PromptSet):
    name = "miniworld_csv"
    config_cls = MiniWorldCSVConfig
    config: MiniWorldCSVConfig

    @classmethod
    def preflight(cls, config: MiniWorldCSVConfig) -> None:
        cls(config).rows()

    def rows(self) -> list[PromptRow]:
        table = read_table(self.config.path)
        columns = dict(table.rows)
        out, refused = [], []
        for row in prompt_rows(table):
            line = row.extra["source_line"]
            asks, problem = requested(row.prompt, columns[line])
            if problem:
                refused.append(f"line {line} ({row.prompt!r}): {problem}")
                continue
            kind = concept_kind(self.config.concept)
            extra = {**row.extra, **asks, "group": "target", "concept": self.config.concept}
            out.append(PromptRow(row.prompt, row.seed, row.guidance_scale, row.categories, extra,
                                 stratum=(str(asks.get(kind or "")),)))  # fmt: skip
        if refused:
            more = f"; and {len(refused) - SHOWN} more" if len(refused) > SHOWN else ""
            raise ConfigError(f"{self.config.path}: the MiniWorld judge cannot judge {len(refused)} row(s): "
                              f"{'; '.join(refused[:SHOWN])}{more}. Name what each row asks for in colour, shape "
                              "and background columns, or use the world's words in the prompt")  # fmt: skip
        return out

    def dataset_name(self) -> str:
        return Path(self.config.path).stem

    def metadata(self) -> dict[str, Any]:
        return {"source": self.config.path, "concept": self.config.concept}
