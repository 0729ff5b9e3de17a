"""Offline checks: whether a model's weights can be had (a local folder, the Hugging Face cache, or the hub), asked
before anything loads so that a missing model is a clear message, not a failure after training."""

from __future__ import annotations

import os

from eval_learn.configs import ConfigError
from eval_learn.errors import RunError
from eval_learn.models.spec import BUILTIN_MODELS, ModelSpec


def _offline_message(spec: ModelSpec, reason: str) -> str:
    return (
        f"Model '{spec.id}' cannot be loaded: {reason}. It is neither in the local Hugging Face cache nor reachable "
        f"on the hub. Run with network access once to cache it, point model.id at a local folder, or use an offline "
        f"model: {', '.join(BUILTIN_MODELS)} (model=tiny)."
    )


def ensure_available(spec: ModelSpec) -> None:
    """Fail fast, before any other model loads, when the base weights cannot be had."""
    if spec.builtin or os.path.isdir(spec.id):
        return
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(spec.id, revision=spec.revision, local_files_only=True)
        return
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        raise RunError(_offline_message(spec, "HF_HUB_OFFLINE is set"))
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(spec.id, revision=spec.revision, timeout=10)
    except Exception as err:  # noqa: BLE001 - any failure here means "not reachable"
        raise RunError(_offline_message(spec, f"{type(err).__name__}: {err}")) from None


def ensure_pretrained_available(model_id: str, revision: str | None, what: str) -> None:
    """A judge's or metric's model (a hub id or a local folder) can be loaded: a local folder exists, or the hub id
    is in the local cache, or the hub is allowed (not HF_HUB_OFFLINE). Checked at construction: a config error, not a
    failure after a technique has trained."""
    if os.path.isdir(model_id):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    if not offline:
        return
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(model_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ConfigError(
            f"{what} '{model_id}' is not a local folder and not in the local Hugging Face cache, and HF_HUB_OFFLINE is "
            f"set: download it once with network access, or give a local folder"
        ) from None
