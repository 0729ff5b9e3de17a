"""Base models: which diffusion pipeline a run starts from, and how it is loaded.

A model config (``conf/model/<name>.yaml``) names the weights (``id``: a hub id, a local folder, or a built-in
offline model) and the generation defaults that belong to them (steps, guidance, resolution). Techniques never
hard-code a base model; the runner hands them this spec.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from eval_learn.configs import ConfigError, from_mapping, require
from eval_learn.errors import RunError
from eval_learn.guidance import check_guidance_scale

log = logging.getLogger(__name__)

BUILTIN_MODELS = ("tiny", "miniworld")
MINIWORLD_DIR = Path(__file__).resolve().parents[1] / "assets" / "miniworld"
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
if not CONF_DIR.is_dir():  # source checkout / editable install: conf/ sits beside the package
    CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# conf/config.yaml keys the per-model presets by the technique, not the option: technique=esd/esd_sd on model=tiny
# still takes conf/preset/tiny_esd.yaml (eval_learn.recipes). Registered here, beside CONF_DIR, which every
# composition of conf/ imports.
OmegaConf.register_new_resolver("technique_name", lambda option: str(option).partition("/")[0], replace=True)


@dataclass
class ModelSpec:
    name: str
    id: str
    revision: str | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512
    # The concept a metric measures when neither it nor the technique names one (e.g. for the free_run baseline).
    default_concept: str = "nudity"
    # Prompt set each metric family uses by default with this model ("auto"); empty for real models (→ I2P etc.).
    default_datasets: dict[str, str] = field(default_factory=dict)
    # torch CPU threads for this model when the run sets none (num_threads): the offline models' operations are too
    # small to gain from a second thread, and waking it costs more than it saves (MiniWorld generation, idle 2-core
    # machine: 15 s on one thread, 29 s on two sleeping-when-idle threads). null: torch's default.
    cpu_threads: int | None = None

    @property
    def builtin(self) -> bool:
        return self.id in BUILTIN_MODELS

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the weights (for the technique weight cache); not the generation defaults. A local folder
        (and the shipped MiniWorld) also counts its weight files' contents, so retrained weights never meet a cache
        entry trained on the old ones."""
        if self.builtin:
            folder = MINIWORLD_DIR if self.id == "miniworld" else None  # tiny is built from code
        else:
            folder = Path(self.id) if os.path.isdir(self.id) else None
        weights = {"weights": weights_digest(folder)} if folder is not None else {}
        return {"id": self.id, "revision": self.revision, **weights}

    def validate(self) -> None:
        require(self.num_inference_steps > 0, "num_inference_steps must be positive")
        require(self.cpu_threads is None or self.cpu_threads > 0, "cpu_threads must be a positive integer or null")
        check_guidance_scale(self.guidance_scale)
        require(self.height % 8 == 0 and self.width % 8 == 0, "height and width must be multiples of 8")
        require(bool(self.id), "id must name a hub model, a local folder or a built-in model")


def weights_digest(folder: Path) -> str:
    """SHA-256 over each weight file's path and full contents: an edit anywhere in a tensor (say a cross-attention
    layer in the middle of a UNet file) changes it. Each file is read once per process."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.suffix in {".safetensors", ".bin", ".pt", ".ckpt"} and path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a rewritten file is read again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read once per (path, size, modification time)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _sha256(str(resolved), stat.st_size, stat.st_mtime_ns)


def model_config_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def resolve_model(spec: str | dict[str, Any] | ModelSpec) -> ModelSpec:
    """A model config name (``sd14``), a hub id / local folder, a mapping, or a ModelSpec → ModelSpec."""
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, str):
        path = CONF_DIR / "model" / f"{spec}.yaml"
        if path.is_file():
            spec = yaml.safe_load(path.read_text())
        elif "/" in spec or os.path.isdir(spec):
            spec = {"name": spec, "id": spec}
        else:
            from eval_learn.configs import did_you_mean

            raise ConfigError(
                f"Unknown model '{spec}'.{did_you_mean(spec, model_config_names())} "
                f"Use one of {model_config_names()}, a hub id such as 'CompVis/stable-diffusion-v1-4', or a local folder."
            )
    return from_mapping(ModelSpec, spec, "model")


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


def _from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` with ``torch_dtype``, which every diffusers this project supports reads; diffusers
    0.36+ also reads ``dtype`` and warns about the old name on every run, a notice nobody can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        return cls.from_pretrained(*args, **kwargs)


def load_pipeline(spec: ModelSpec, device: str, dtype: Any) -> Any:
    """Load the base text-to-image pipeline with the safety checker off (the benchmark judges images itself), in its
    target dtype (loaded so, not cast afterwards; only the tiny model, built in code, is cast)."""
    if spec.id == "tiny":
        from eval_learn.models.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline()
    elif spec.id == "miniworld":
        from diffusers import StableDiffusionPipeline

        pipe = _from_pretrained(
            StableDiffusionPipeline, str(MINIWORLD_DIR), torch_dtype=dtype, safety_checker=None, requires_safety_checker=False,
            local_files_only=True,
        )  # fmt: skip
    else:
        ensure_available(spec)
        from diffusers import AutoPipelineForText2Image

        kwargs: dict[str, Any] = {"torch_dtype": dtype, "revision": spec.revision}
        pipe = _from_pretrained(AutoPipelineForText2Image, spec.id, safety_checker=None, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return cast_pipeline(pipe, device, dtype)


def cast_pipeline(pipe: Any, device: str, dtype: Any) -> Any:
    """Move ``pipe``; cast only when the dtype really changes (diffusers warns on every no-op cast)."""
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(dtype=dtype)
    return pipe.to(device)
