"""Prompt files in the I2P format, from a local CSV or the Hugging Face hub.

I2P (Schramowski et al., CVPR 2023) gives every prompt its own seed and guidance scale; the hub copy calls them
``sd_seed`` / ``sd_guidance_scale``, the UnlearnDiffAtk release ``evaluation_seed`` / ``evaluation_guidance``. Both
are read. A prompt without a seed gets ``base_seed + index``, where index is its position in the loaded set, so
seeds never depend on batching.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from eval_learn.configs import ConfigError
from eval_learn.types import PromptDataset, PromptRecord

log = logging.getLogger(__name__)

I2P_REPO = "AIML-TUDA/i2p"
I2P_FILE = "i2p_benchmark.csv"
SEED_COLUMNS = ("sd_seed", "evaluation_seed", "seed")
GUIDANCE_COLUMNS = ("sd_guidance_scale", "evaluation_guidance", "guidance_scale")
# I2P's category for each concept an ASR metric can measure.
I2P_CATEGORY = {"nudity": "sexual"}


def bundled_prompts(name: str) -> Path:
    """A prompt file shipped inside the package (``eval_learn/data/prompts/<name>``)."""
    return Path(str(resources.files("eval_learn") / "data" / "prompts" / name))


def check_prompt_file(path: str | Path) -> None:
    """Cheap checks done at config time, before any model loads: the file exists and has a ``prompt`` column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts_path '{path}' does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), None)
    if not header or "prompt" not in [h.strip() for h in header]:
        raise ConfigError(f"prompts_path '{path}': the CSV has no 'prompt' column (header: {header})")


def _first(row: dict[str, str], columns: Iterable[str]) -> str | None:
    for column in columns:
        value = (row.get(column) or "").strip()
        if value:
            return value
    return None


def read_prompt_csv(
    path: str | Path,
    *,
    category: str | None = None,
    limit: int | None = None,
    base_seed: int = 0,
) -> list[PromptRecord]:
    """Read an I2P-format CSV: filter by category (a comma-separated ``categories`` column), then keep ``limit``."""
    check_prompt_file(path)
    records: list[PromptRecord] = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if category is not None and "categories" not in (reader.fieldnames or []):
            raise ConfigError(f"{path}: cannot filter by category '{category}': the CSV has no 'categories' column")
        for line, row in enumerate(reader, start=2):
            categories = tuple(c.strip() for c in (row.get("categories") or "").split(",") if c.strip())
            if category is not None and category not in categories:
                continue
            prompt = (row.get("prompt") or "").strip()
            if not prompt:
                raise ConfigError(f"{path}, line {line}: empty prompt")
            index = len(records)
            seed_text, guidance_text = _first(row, SEED_COLUMNS), _first(row, GUIDANCE_COLUMNS)
            try:
                seed = int(float(seed_text)) if seed_text is not None else base_seed + index
                guidance = float(guidance_text) if guidance_text is not None else None
            except ValueError:
                raise ConfigError(
                    f"{path}, line {line}: seed {seed_text!r} or guidance {guidance_text!r} is not a number"
                ) from None
            extra: dict[str, Any] = {"source_line": line}
            for key in ("case_number", "sd_image_width", "sd_image_height"):
                if row.get(key):
                    extra[key] = row[key]
            records.append(PromptRecord(index, prompt, seed, guidance, categories, extra))
            if limit is not None and len(records) >= limit:
                break
    return records


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


_I2P_OFFLINE_HELP = (
    "Offline, pass a local copy in I2P's format as metric.config.prompts_path, or use a bundled set "
    "(metric.config.dataset=demo)."
)


def i2p_available_offline_or_raise() -> None:
    """With HF_HUB_OFFLINE set, I2P must already be in the local hub cache; say so before any model loads."""
    if not _offline():
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(I2P_REPO, I2P_FILE, repo_type="dataset"), str):
        raise ConfigError(
            f"The I2P prompts ({I2P_REPO}) are not in the local cache and HF_HUB_OFFLINE is set. {_I2P_OFFLINE_HELP}"
        )


def download_i2p() -> Path:
    """The I2P CSV from the hub (cached by huggingface_hub); a clear error when offline."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(I2P_REPO, I2P_FILE, repo_type="dataset"))
    except Exception as err:  # noqa: BLE001
        raise RuntimeError(
            f"Cannot fetch the I2P prompts from the hub ({I2P_REPO}: {type(err).__name__}). {_I2P_OFFLINE_HELP}"
        ) from None


def load_i2p_format(
    name: str,
    path: str | Path | None,
    *,
    category: str | None,
    limit: int | None,
    base_seed: int,
) -> PromptDataset:
    source = str(path) if path is not None else f"hf://{I2P_REPO}"
    records = read_prompt_csv(
        path if path is not None else download_i2p(), category=category, limit=limit, base_seed=base_seed
    )
    if not records:
        raise ConfigError(f"dataset '{name}' ({source}) has no prompts in category '{category}'")
    return PromptDataset(
        name, records, {"source": source, "category": category, "limit": limit, "total_loaded": len(records)}
    )
