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

from eval_learn.storage import atomic_write, json_safe, seal_problem, sealed, sha256_bytes


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
    """``folder/state.json`` (per-image records, ``extra``) and ``folder/state.safetensors`` (sums). The JSON carries
    the SHA-256 of its own content and of the tensor file's bytes: :func:`load` refuses a state that does not match.
    The tensors are written first, so a process killed between the two writes leaves a state that fails its check
    rather than one that mixes two batches."""
    tensors = {name: s.value.contiguous() for name, s in states.items() if isinstance(s, Sum)}
    tensor_bytes = save_safetensors_bytes(tensors) if tensors else None
    if tensor_bytes is not None:
        atomic_write(folder / "state.safetensors", tensor_bytes)
    payload = sealed({"kinds": {n: s.kind for n, s in states.items()}, "state": state_json(states), **extra,
                      "tensors_sha256": sha256_bytes(tensor_bytes) if tensor_bytes is not None else None})  # fmt: skip
    atomic_write(folder / "state.json", (json.dumps(payload, allow_nan=False) + "\n").encode())


class DamagedState(ValueError):
    """A saved state that does not verify: its path and what is wrong."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"the key {next(k for k in keys if keys.count(k) > 1)!r} appears twice")
    return dict(pairs)


def read_verified(folder: Path) -> tuple[dict[str, Any], bytes | None]:
    """``folder/state.json`` (and the bytes of ``state.safetensors``) after checking both against the digests
    written with them; :class:`DamagedState` names the file otherwise."""
    path = Path(folder) / "state.json"
    try:
        payload = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except FileNotFoundError:
        raise DamagedState(f"{path} does not exist") from None
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DamagedState(f"{path} cannot be read ({type(err).__name__}: {err})") from None
    problem = seal_problem(payload)
    if problem:
        raise DamagedState(f"{path} {problem}")
    tensor_bytes = None
    if payload.get("tensors_sha256") is not None:
        tensor_path = path.with_name("state.safetensors")
        try:
            tensor_bytes = tensor_path.read_bytes()
        except OSError as err:
            raise DamagedState(f"{tensor_path} cannot be read ({err.strerror or err})") from None
        if sha256_bytes(tensor_bytes) != payload["tensors_sha256"]:
            raise DamagedState(f"{tensor_path} does not match the digest recorded in {path}")
    return payload, tensor_bytes


def load(states: dict[str, State], folder: Path) -> dict[str, Any]:
    """Fill ``states`` from a saved folder, verified (digests, kinds, indices, shapes); returns the saved JSON (with
    its ``extra`` fields)."""
    path = Path(folder) / "state.json"
    payload, tensor_bytes = read_verified(folder)
    kinds = {n: s.kind for n, s in states.items()}
    if payload.get("kinds") != kinds:
        raise DamagedState(f"{path} holds states {payload.get('kinds')}, this metric keeps {kinds}")
    try:
        tensors = load_safetensors_bytes(tensor_bytes) if tensor_bytes is not None else {}
    except Exception as err:  # noqa: BLE001 - any failure to decode verified bytes is a damaged file
        raise DamagedState(f"{path.with_name('state.safetensors')} cannot be decoded ({err})") from None
    for name, state in states.items():
        if isinstance(state, PerImage):
            records = payload["state"].get(name)
            if not isinstance(records, dict) or not all(
                k.isdigit() and isinstance(v, dict) for k, v in records.items()
            ):
                raise DamagedState(f"{path}: state '{name}' is not a mapping of image indices to records")
            state.load_json(records)
        else:
            value = tensors.get(name)
            if value is None or tuple(value.shape) != tuple(state.value.shape):
                raise DamagedState(f"{path}: the sum '{name}' is missing or has the wrong shape")
            state.value = value.to(torch.float64)
    return payload
