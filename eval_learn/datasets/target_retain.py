"""``target_retain``: two local prompt files for unlearning/retain accuracy (``ua_ira`` on a real model), in the style
of UnlearnCanvas (Zhang et al., NeurIPS 2024 Datasets and Benchmarks): *target* prompts ask for the erased concept,
*retain* prompts ask for other concepts of the same kind, and every row names what it asks for in a label column.

Both files are CSVs with a ``prompt`` column (seeds and guidance scales are read where present, as for any prompt
file) and a label column (``label`` by default; ``label_column`` names another, e.g. ``style`` or ``artist``). A target
row without a label asks for the erased concept. Every row carries its group (target / retain) and its label, so
each image is judged by its own record, never by its position in a batch; ``limit`` spreads over groups and labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eval_learn.datasets.base import PromptRow, PromptSet, PromptSetConfig, name_from_path
from eval_learn.datasets.tables import normalise, prompt_rows, read_table
from eval_learn.errors import ConfigError

GROUPS = ("target", "retain")


@dataclass
class TargetRetainConfig(PromptSetConfig):
    target: str = ""  # CSV of prompts asking for the erased concept
    retain: str = ""  # CSV of prompts asking for other concepts, each with its label
    label_column: str = "label"

    def validate(self) -> None:
        if not self.target or not self.retain:
            raise ConfigError("the target_retain prompt set needs both files: {name: target_retain, target: FILE, "
                              "retain: FILE}")  # fmt: skip
        if not self.label_column.strip():
            raise ConfigError("label_column must name a column")


class TargetRetain(PromptSet):
    name = "target_retain"
    config_cls = TargetRetainConfig
    config: TargetRetainConfig

    @classmethod
    def preflight(cls, config: TargetRetainConfig) -> None:
        TargetRetain(config).rows()

    def group_rows(self, group: str, path: str) -> list[PromptRow]:
        table = read_table(path)
        column = normalise(self.config.label_column)
        if group == "retain" and not table.has(column):
            raise ConfigError(f"{path}: no '{self.config.label_column}' column: every retain prompt must name the "
                              f"concept it asks for (header: {list(table.header)})")  # fmt: skip
        labels = {line: (row.get(column) or "").strip() for line, row in table.rows}
        out = []
        for row in prompt_rows(table):
            label = labels[row.extra["source_line"]]
            if group == "retain" and not label:
                raise ConfigError(f"{path}, line {row.extra['source_line']}: empty '{self.config.label_column}'")
            extra = {**row.extra, "group": group, "label": label or None}
            out.append(PromptRow(row.prompt, row.seed, row.guidance_scale, row.categories, extra,
                                 (group, label)))  # fmt: skip
        if not out:
            raise ConfigError(f"{path} has no prompts")
        return out

    def rows(self) -> list[PromptRow]:
        return self.group_rows("target", self.config.target) + self.group_rows("retain", self.config.retain)

    def labels(self) -> dict[str, list[str]]:
        """The distinct labels of each group, in file order."""
        out: dict[str, list[str]] = {g: [] for g in GROUPS}
        for row in self.rows():
            label = row.extra["label"]
            if label and label not in out[row.extra["group"]]:
                out[row.extra["group"]].append(label)
        return out

    def dataset_name(self) -> str:
        return name_from_path(self.config.target)

    def metadata(self) -> dict[str, Any]:
        return {"source": {"target": self.config.target, "retain": self.config.retain},
                "label_column": self.config.label_column, "category": None}  # fmt: skip
