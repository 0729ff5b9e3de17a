"""Typed, mergeable metric state (after torchmetrics' ``add_state``): what a metric accumulates, saved as it goes.

Two kinds cover the metrics of the field:

- :class:`PerImage` — one JSON record per image, keyed by the image's index in the metric's set (ASR verdicts,
  CLIP scores, UA/IRA judgements). Merging two shards is a disjoint union; an image recorded twice is an error.
- :class:`Sum` — a running sum (a float64 tensor): feature sums and outer-product sums for FID, counts. Merging
  adds.

Because every kind is keyed by image or is a sum, a metric fed in one batch or many, resumed from a saved state,
or merged from shards holds exactly the same state. :func:`save` writes the JSON part and the tensors side by side
(``state.json``, ``state.safetensors``), atomically.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from eval_learn.storage import atomic_write, json_safe


class PerImage:
    kind = "per_image"

    def __init__(self) -> None:
        self.items: dict[int, dict[str, Any]] = {}

    def add(self, index: int, record: dict[str, Any]) -> None:
        if index in self.items:
            raise ValueError(f"image {index} was recorded twice")
        self.items[index] = record

    def merge(self, other: PerImage) -> None:
        overlap = self.items.keys() & other.items.keys()
        if overlap:
            raise ValueError(f"cannot merge: images {sorted(overlap)[:5]} are in both states")
        self.items.update(copy.deepcopy(other.items))

    def to_json(self) -> dict[str, Any]:
        return {str(k): v for k, v in sorted(self.items.items())}

    def load_json(self, data: dict[str, Any]) -> None:
        self.items = {int(k): v for k, v in data.items()}

    def sorted(self) -> list[dict[str, Any]]:
        return [self.items[i] for i in sorted(self.items)]

    def __len__(self) -> int:
        return len(self.items)


class Sum:
    kind = "sum"

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.value = torch.zeros(shape, dtype=torch.float64)

    def add(self, x: torch.Tensor | float) -> None:
        self.value += torch.as_tensor(x, dtype=torch.float64)

    def merge(self, other: Sum) -> None:
        self.value += other.value


State = PerImage | Sum


def state_json(states: dict[str, State]) -> dict[str, Any]:
    """The JSON view (what the report's ``metric_state`` holds); sums are listed by shape, their values in tensors."""
    out: dict[str, Any] = {}
    for name, state in states.items():
        if isinstance(state, PerImage):
            out[name] = state.to_json()
        else:
            out[name] = {"sum": list(state.value.shape), "numel": state.value.numel()}
            if state.value.numel() <= 64:
                out[name]["value"] = state.value.tolist()
    return json_safe(out)


def save(states: dict[str, State], folder: Path, extra: dict[str, Any]) -> None:
    """``folder/state.json`` (per-image records, ``extra``) and ``folder/state.safetensors`` (sums)."""
    tensors = {name: s.value.contiguous() for name, s in states.items() if isinstance(s, Sum)}
    if tensors:
        atomic_write(folder / "state.safetensors", save_safetensors_bytes(tensors))
    payload = {"kinds": {n: s.kind for n, s in states.items()}, "state": state_json(states), **extra}
    atomic_write(folder / "state.json", (json.dumps(payload, allow_nan=False) + "\n").encode())


def load(states: dict[str, State], folder: Path) -> dict[str, Any]:
    """Fill ``states`` from a saved folder; returns the saved JSON (with its ``extra`` fields)."""
    payload = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    tensors = load_safetensors_bytes((folder / "state.safetensors").read_bytes()) if any(
        isinstance(s, Sum) for s in states.values()
    ) else {}  # fmt: skip
    for name, state in states.items():
        if isinstance(state, PerImage):
            state.load_json(payload["state"][name])
        else:
            state.value = tensors[name].to(torch.float64)
    return payload
