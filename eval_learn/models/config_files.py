"""Model and per-model technique settings read from ``conf/`` (``conf/model/<name>.yaml``,
``conf/preset/<model>_<technique>.yaml``) for the Python API."""

from __future__ import annotations

import os
from typing import Any

import yaml

from eval_learn.configs import ConfigError, from_mapping
from eval_learn.models.locations import CONF_DIR
from eval_learn.models.spec import ModelSpec


def model_config_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def resolve_model(spec: str | dict[str, Any] | ModelSpec) -> ModelSpec:
    """A model config name (``sd14``), a hub id / local folder, a mapping, or a ModelSpec → ModelSpec. A name is read
    from the built-in ``conf/model/`` only: :func:`eval_learn.compose.resolve_model` reads Hydra's search path."""
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
