"""Trained or edited weights on disk: named tensors of any pipeline component, verified by a digest when read.

A technique's weights are a flat mapping ``"<component>.<parameter>" → tensor`` where the component is an attribute
of the pipeline (``unet``, ``text_encoder``, or a module the technique adds, such as a LoRA). The cache stores them
as safetensors with the SHA-256 of their contents in the file's metadata; a file that is truncated, corrupted or
edited fails that check when read and is reported by path and rebuilt, never used.

``save_path`` writes the format its suffix names: ``.safetensors``, or ``.pt``/``.pth``/``.bin``/``.ckpt`` (a torch state
dict, as the research code releases do); ``load_path`` reads both, and a plain UNet state dict (keys without a
component prefix) is read as the UNet's.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from eval_learn.errors import ConfigError, NonFiniteError
from eval_learn.storage import atomic_write

Weights = dict[str, torch.Tensor]
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
DIGEST_KEY = "eval_learn_sha256"


class DamagedWeights(Exception):
    """A weights file that cannot be read or does not match its digest."""


def check_suffix(path: str, key: str) -> None:
    if not path.endswith(SUFFIXES):
        raise ConfigError(
            f"{key} '{path}' must end in one of {', '.join(SUFFIXES)} (the suffix names the format that is written)"
        )


def cpu_copies(params: Mapping[str, torch.Tensor], prefix: str = "") -> Weights:
    """Trained parameters as the weights to save: contiguous float32 CPU copies, each named ``prefix + name``."""
    return {prefix + name: p.detach().to("cpu", torch.float32).contiguous() for name, p in params.items()}


def weights_digest(weights: Weights) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order: equal digests mean equal tensors."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_finite(weights: Weights, what: str, hint: str = "") -> None:
    bad = [name for name, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteError(
            f"{what} produced non-finite weights (NaN or infinity) in {len(bad)} of {len(weights)} tensors "
            f"(e.g. '{bad[0]}'); nothing was cached and no images were made from them.{hint}"
        )


def to_cpu(weights: Weights) -> Weights:
    return {name: t.detach().to("cpu").contiguous() for name, t in weights.items()}


def encode(weights: Weights, path: str, metadata: dict[str, Any]) -> bytes:
    """The file bytes for ``path``'s format; safetensors files carry the digest and ``metadata``."""
    weights = to_cpu(weights)
    if path.endswith(TORCH_SUFFIXES):
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        return buffer.getvalue()
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    return save_safetensors_bytes(weights, metadata={**meta, DIGEST_KEY: weights_digest(weights)})


def write(weights: Weights, path: Path, metadata: dict[str, Any]) -> None:
    atomic_write(Path(path), encode(weights, str(path), metadata))


def read(path: Path, *, require_digest: bool) -> Weights:
    """Read a weights file. With ``require_digest`` (the cache) a safetensors file must carry a matching digest."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if str(path).endswith(SAFETENSORS_SUFFIXES):
            weights = load_safetensors_bytes(data)
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            recorded = (header.get("__metadata__") or {}).get(DIGEST_KEY)
        else:
            weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            recorded = None
    except pickle.UnpicklingError as err:  # weights_only refused a global: not a file of tensors (maybe malicious)
        found = re.search(r"(?:Unsupported global|GLOBAL)[: ]+(?:GLOBAL )?([\w.]+)", str(err))
        what = f" (it asks for '{found.group(1)}')" if found else ""
        raise DamagedWeights(
            f"{path} is not a file of weights: it holds Python objects other than tensors{what}, "
            f"which are not loaded (they could run code)"
        ) from None
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, KeyError) as err:
        raise DamagedWeights(f"{path} cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise DamagedWeights(f"{path} does not hold a mapping of tensor names to tensors")
    if recorded is not None or require_digest:
        actual = weights_digest(weights)
        if recorded != actual:
            raise DamagedWeights(f"{path} does not match its recorded digest ({recorded} vs {actual})")
    return weights


def apply(pipe: Any, weights: Weights, default_component: str = "unet") -> dict[str, int]:
    """Set each tensor on its component; returns how many tensors each component received. A name that does not
    exist in the pipeline is an error (a file made for another model), not something to skip."""
    by_component: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights.items():
        component, _, rest = name.partition(".")
        if not isinstance(getattr(pipe, component, None), torch.nn.Module):
            component, rest = default_component, name
        by_component.setdefault(component, {})[rest] = tensor
    for component, state in by_component.items():
        module: torch.nn.Module = getattr(pipe, component)
        own = module.state_dict()
        unknown = [k for k in state if k not in own]
        if unknown:
            raise ConfigError(
                f"{len(unknown)} tensors do not belong to this pipeline's {component} (e.g. '{unknown[0]}'): "
                f"were these weights made for another base model?"
            )
        mismatched = [k for k, t in state.items() if tuple(t.shape) != tuple(own[k].shape)]
        if mismatched:
            k = mismatched[0]
            raise ConfigError(
                f"tensor '{component}.{k}' has shape {tuple(state[k].shape)}, the pipeline's {tuple(own[k].shape)}"
            )
        with torch.no_grad():
            for k, t in state.items():
                own[k].copy_(t.to(own[k].dtype))
    return {c: len(s) for c, s in by_component.items()}
