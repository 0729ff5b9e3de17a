"""``csv``: a local prompt file (``prompts={name: csv, path: FILE}``, or ``metric.config.prompts_path=FILE``).

Any CSV with a ``prompt`` column works; seeds, guidance scales and categories are read where the file has them
(:mod:`eval_learn.datasets.tables`), and ``category`` filters only a file that has a ``categories`` column (a file
without one gets a clear message at construction, not a failure after the model has loaded). For a concept measured on
I2P (``asr``, ``err``), a file in I2P's format given without a category keeps the concept's category, as the hub copy
does (:func:`eval_learn.protocols.as_protocol_rows`); ``category: null`` keeps every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eval_learn.datasets.base import PromptRow, PromptSet, PromptSetConfig, name_from_path
from eval_learn.datasets.tables import prompt_rows, read_table
from eval_learn.errors import ConfigError


@dataclass
class CSVConfig(PromptSetConfig):
    path: str = ""
    category: str | None = None  # keep rows whose 'categories' list this (null: every row)
    stratify_by: str | None = None  # a column whose values `limit` spreads over (e.g. class)

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("the csv prompt set needs a path (prompts={name: csv, path: FILE})")


class LocalCSV(PromptSet):
    name = "csv"
    config_cls = CSVConfig
    config: CSVConfig

    @classmethod
    def preflight(cls, config: CSVConfig) -> None:
        table = read_table(config.path)
        if config.stratify_by is not None and not table.has(config.stratify_by):
            raise ConfigError(f"{config.path}: no column '{config.stratify_by}' to stratify by")
        if not prompt_rows(table, category=config.category):
            raise ConfigError(f"{config.path} has no prompts in category '{config.category}'")

    def rows(self) -> list[PromptRow]:
        return prompt_rows(read_table(self.config.path), category=self.config.category,
                           stratum_column=self.config.stratify_by)  # fmt: skip

    def dataset_name(self) -> str:
        return name_from_path(self.config.path)

    def metadata(self) -> dict[str, Any]:
        return {"source": self.config.path, "category": self.config.category}
