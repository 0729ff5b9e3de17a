"""Base models: which diffusion pipeline a run starts from, and how it is loaded.

A model config (``conf/model/<name>.yaml``) names the weights (``id``: a hub id, a local folder, or a built-in
offline model) and the generation defaults that belong to them (steps, guidance, resolution). Techniques never
hard-code a base model; the runner hands them this spec. One job per module:

- :mod:`~eval_learn.models.spec` — :class:`ModelSpec`, the model a run uses;
- :mod:`~eval_learn.models.hashing` — weight-file digests (cache keys);
- :mod:`~eval_learn.models.locations` — where ``conf/`` and the shipped MiniWorld weights are;
- :mod:`~eval_learn.models.config_files` — model configs and per-model presets read from ``conf/``;
- :mod:`~eval_learn.models.availability` — whether weights can be had offline, asked before anything loads;
- :mod:`~eval_learn.models.pipeline` — loading the diffusers pipeline.

The names below are re-exported for code written against the one-module layout; none of these modules imports torch
or diffusers at import time.
"""

from __future__ import annotations

from eval_learn.models.availability import ensure_available, ensure_pretrained_available
from eval_learn.models.config_files import model_config_names, resolve_model
from eval_learn.models.hashing import file_sha256, weights_digest
from eval_learn.models.locations import CONF_DIR, MINIWORLD_DIR
from eval_learn.models.pipeline import cast_pipeline, load_pipeline
from eval_learn.models.spec import BUILTIN_MODELS, ModelSpec

__all__ = [
    "BUILTIN_MODELS",
    "CONF_DIR",
    "MINIWORLD_DIR",
    "ModelSpec",
    "cast_pipeline",
    "ensure_available",
    "ensure_pretrained_available",
    "file_sha256",
    "load_pipeline",
    "model_config_names",
    "resolve_model",
    "weights_digest",
]
