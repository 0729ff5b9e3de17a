"""Prompt sets: where a metric's prompts come from, as named parts (``prompts: i2p``, ``prompts: {name: csv, path: ...}``).

A prompt set yields *prompt rows* (a prompt, and its own seed, guidance scale and categories where the source has
them). What every metric does with them is shared here, so that it means the same everywhere:

- ``limit`` keeps whole prompts, spread across the set's strata (shapes, classes, groups) by round-robin, never a
  slice that drops whole classes;
- ``samples_per_prompt`` renders each kept prompt k times: sample j of a prompt with its own seed s gets seed s + j.
  A prompt without a seed gets s = ``base_seed`` + a 32-bit number drawn from its text (and from how many times the
  same text came before it in the set): seeds belong to prompts, never to batches or positions, different prompts
  get independent noise, and the same prompt gets the same images in every metric that asks for it (so the engine
  renders them once).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from eval_learn.errors import ConfigError
from eval_learn.types import PromptDataset, PromptRecord

SEED_LIMIT = 2**64  # torch.Generator.manual_seed accepts [0, 2**64)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    seed: int | None = None
    guidance_scale: float | None = None
    categories: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # Coarse to fine (e.g. (group, concept, shape)): ``limit`` takes prompts round-robin at every level.
    stratum: tuple[str, ...] = ()


@dataclass
class PromptSetConfig:
    """Settings every prompt set has (none yet); subclasses add theirs."""

    def validate(self) -> None:
        pass


class PromptSet:
    name: ClassVar[str]
    config_cls: ClassVar[type[PromptSetConfig]] = PromptSetConfig

    def __init__(self, config: PromptSetConfig) -> None:
        self.config = config

    @classmethod
    def preflight(cls, config: PromptSetConfig) -> None:
        """Checks done at runner construction, before any model loads (files exist and parse, data is reachable)."""

    def rows(self) -> list[PromptRow]:
        raise NotImplementedError

    def dataset_name(self) -> str:
        return self.name

    def metadata(self) -> dict[str, Any]:
        """What the report records as ``dataset_metadata`` (besides counts): the source and its filters."""
        return {"source": self.name, **asdict(self.config)}


def name_from_path(path: str) -> str:
    """A prompt file's name as it becomes part of metric names, columns, Markdown and file names: its stem with
    anything but letters, digits, ``.``, ``_`` and ``-`` replaced (``<script>`` in a file name stays text)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem).strip("._")
    return name[:64] or "prompts"


def interleave(rows: list[PromptRow], level: int = 0) -> list[PromptRow]:
    """Rows ordered round-robin across their strata at each level (coarse to fine), then in their own order."""
    if not rows or level >= max(len(r.stratum) for r in rows):
        return rows
    groups: OrderedDict[str, list[PromptRow]] = OrderedDict()
    for row in rows:
        key = row.stratum[level] if level < len(row.stratum) else ""
        groups.setdefault(key, []).append(row)
    lists = [interleave(g, level + 1) for g in groups.values()]
    out = []
    for i in range(max(len(g) for g in lists)):
        out += [g[i] for g in lists if i < len(g)]
    return out


def select(rows: list[PromptRow], limit: int | None, name: str = "the prompt set") -> list[PromptRow]:
    """The first ``limit`` prompts in round-robin order over strata, returned in the set's own order. A ``limit`` that
    keeps everything is said once: a user who asked for more prompts than there are would otherwise see no change."""
    if limit is not None and limit >= len(rows):
        log.warning("limit %d keeps all %d prompts of %s (it has no more): the limit changes nothing", limit,
                    len(rows), name)  # fmt: skip
    if limit is None or limit >= len(rows):
        return rows
    keep = {id(r) for r in interleave(rows)[:limit]}
    return [r for r in rows if id(r) in keep]


def prompt_seed(base_seed: int, prompt: str, occurrence: int = 0) -> int:
    """The seed of a prompt that has none of its own (see the module docstring)."""
    digest = hashlib.sha256(f"{occurrence}\x00{prompt}".encode()).digest()
    return (base_seed + int.from_bytes(digest[:4], "big")) % SEED_LIMIT


def occurrences(rows: list[PromptRow]) -> dict[int, int]:
    """For each row (by id), how many rows with the same text come before it."""
    seen: Counter[str] = Counter()
    out = {}
    for row in rows:
        out[id(row)] = seen[row.prompt]
        seen[row.prompt] += 1
    return out


def expand(
    rows: list[PromptRow], samples: int | dict[str, int], base_seed: int, occurrence: dict[int, int] | None = None,
    key: str = "group",
) -> list[PromptRecord]:  # fmt: skip
    """One record per image. ``samples``: per prompt, or per value of ``row.extra[key]``."""
    occurrence = occurrence if occurrence is not None else occurrences(rows)
    records = []
    for row in rows:
        k = samples if isinstance(samples, int) else samples[row.extra[key]]
        first = row.seed if row.seed is not None else prompt_seed(base_seed, row.prompt, occurrence[id(row)])
        for j in range(k):
            extra = {**row.extra, "sample": j} if k > 1 else dict(row.extra)
            records.append(PromptRecord(len(records), row.prompt, (first + j) % SEED_LIMIT, row.guidance_scale,
                                        row.categories, extra))  # fmt: skip
    return records


def build_dataset(
    prompt_set: PromptSet,
    *,
    limit: int | None,
    samples: int | dict[str, int],
    base_seed: int,
) -> PromptDataset:
    rows = prompt_set.rows()
    if not rows:
        raise ConfigError(f"prompt set '{prompt_set.dataset_name()}' has no prompts ({prompt_set.metadata()})")
    kept = select(rows, limit, f"'{prompt_set.dataset_name()}'")
    records = expand(kept, samples, base_seed, occurrences(rows))
    metadata = {
        **prompt_set.metadata(),
        "limit": limit,
        "prompts_available": len(rows),
        "prompts": len(kept),
        "samples_per_prompt": samples,
        "total_loaded": len(records),
    }
    return PromptDataset(prompt_set.dataset_name(), records, metadata)


def check_seed(value: int, where: str) -> int:
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{where}: seed {value} is outside the generator's range [0, 2**64)")
    return value
