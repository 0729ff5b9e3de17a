"""The run's model, technique and per-model preset configs as ``python -m eval_learn`` composes them.

Both entry points read configs through Hydra's compose API on one search path: our ``conf/``, the folders every Hydra
search-path plugin adds (a module under the ``hydra_plugins`` namespace package), ``hydra.searchpath`` in
``conf/config.yaml`` and, on the command line, ``hydra.searchpath=[...]``. So a plugin's ``model/<name>.yaml``,
``technique/<name>.yaml`` (and its recipes) or ``preset/<model>_<technique>.yaml`` works the same from
:class:`~eval_learn.runners.SingleBenchmarkRunner` as from the command line, and both resolve the same config.

Hydra is imported only when a config is composed: ``--help``, ``list`` and a config error stay light.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from eval_learn.configs import did_you_mean
from eval_learn.errors import ConfigError
from eval_learn.models import CONF_DIR, ModelSpec, resolve_model
from eval_learn.settings import RunConfigSchema

CONFIG_NAME = "config"  # conf/config.yaml: the run config's primary file
SCHEMA_NAME = "run_schema"  # what conf/config.yaml builds on (its first default)


def searchpath_overrides(overrides: Sequence[str]) -> list[str]:
    """The ``hydra.searchpath=[...]`` overrides among ``overrides``: the config folders they add."""
    return [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == "hydra.searchpath"]


def register_schema() -> None:
    """Put :class:`RunConfigSchema` in Hydra's ConfigStore, where ``conf/config.yaml`` finds it."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfigSchema)


@contextlib.contextmanager
def hydra_session() -> Iterator[Any]:
    """Hydra initialised on ``conf/`` (with every search-path plugin), yielding its config loader.

    A Hydra app or compose session already running (the command line's job, a test's) is set aside and restored
    afterwards, so a runner built inside one reads its configs the same way as one built from plain Python."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schema()
    running = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), job_name="eval_learn", version_base="1.3"):
            yield GlobalHydra.instance().config_loader()
    finally:
        GlobalHydra.instance().clear()
        if running is not None:
            GlobalHydra.instance().initialize(running)


def options(group: str, overrides: Sequence[str] = ()) -> list[str]:
    """The options of a config group on the search path (``hydra.searchpath`` in ``overrides`` included)."""
    return list(_options(group, tuple(searchpath_overrides(overrides))))


@functools.lru_cache(maxsize=256)
def _options(group: str, searchpath: tuple[str, ...]) -> tuple[str, ...]:
    with hydra_session() as loader:
        return tuple(sorted(loader.get_group_options(group, config_name=CONFIG_NAME, overrides=list(searchpath))))


@functools.lru_cache(maxsize=256)
def _compose(overrides: tuple[str, ...]) -> dict[str, Any]:
    """The run config's ``model`` and ``technique`` nodes, resolved, as ``overrides`` compose them (once per
    process: a sweep's validation builds a runner per job)."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with hydra_session():
            cfg = compose(CONFIG_NAME, overrides=["metrics=[]", *overrides])
            return {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "technique")}
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(str(err).strip().split("\n")[0]) from None


def model_config(name: str, overrides: Sequence[str] = ()) -> dict[str, Any] | None:
    """``model/<name>.yaml`` as the run config composes it, or None when no such option is on the search path."""
    searchpath = tuple(searchpath_overrides(overrides))
    if name not in _options("model", searchpath):
        return None
    return copy.deepcopy(_compose((*searchpath, f"model={name}", "~preset"))["model"])


def model_spec(model: str | Mapping[str, Any] | ModelSpec, overrides: Sequence[str] = ()) -> tuple[ModelSpec, str]:
    """The base model a run names (a model option, a hub id or local folder, a mapping, a ModelSpec) and the name
    that keys its per-model presets (``preset/<name>_<technique>.yaml``). A name that is none of these is a
    ConfigError naming the nearest model option."""
    if isinstance(model, ModelSpec):
        return model, model.name
    if isinstance(model, Mapping):
        spec = resolve_model(dict(model))
        return spec, spec.name
    config = model_config(model, overrides)
    if config is not None:
        return resolve_model(config), model
    if "/" in model or os.path.isdir(model):
        return resolve_model({"name": model, "id": model}), model
    names = options("model", overrides)
    raise ConfigError(f"Unknown model '{model}'.{did_you_mean(model, names)} Use one of {names}, a hub id such as "
                      f"'CompVis/stable-diffusion-v1-4', or a local folder.")  # fmt: skip


def technique_config(option: str, model: str | None = None, overrides: Sequence[str] = ()) -> dict[str, Any] | None:
    """The technique node ``{name, recipe, follows, differs, config}`` that ``technique=<option>`` composes: the
    recipe's config under the per-model preset of ``model`` (a model option; None or another name: no preset).
    None when the technique has no YAML on the search path (a plugin class registered in code only). An unknown
    recipe is a ConfigError naming the nearest one."""
    searchpath = tuple(searchpath_overrides(overrides))
    name, _, recipe = option.partition("/")
    if name not in _options("technique", searchpath):
        if recipe:
            raise ConfigError(f"unknown technique recipe '{option}': technique '{name}' has no recipes on the config "
                              f"search path")  # fmt: skip
        return None
    selected = [f"technique={name}"]
    if recipe:
        recipes = _options(f"technique/{name}", searchpath)
        if recipe in recipes:
            selected = [f"technique={option}"]
        elif recipe != _compose((*searchpath, *selected, "~preset"))["technique"].get("recipe"):
            available = [name, *(f"{name}/{r}" for r in recipes)]
            raise ConfigError(f"unknown technique recipe '{option}'.{did_you_mean(option, available)} "
                              f"Recipes of {name}: {', '.join(available)}")  # fmt: skip
    has_preset = model is not None and model in _options("model", searchpath)
    preset = [f"model={model}"] if has_preset else ["~preset"]
    return copy.deepcopy(_compose((*searchpath, *selected, *preset))["technique"])


def config_groups(overrides: Sequence[str] = ()) -> dict[str, list[str]]:
    """Every config group of the run (``technique``, ``technique/esd``, ``model``, ...; not Hydra's own) on the search
    path, with its options: what ``--help`` lists."""
    from hydra.core.object_type import ObjectType

    searchpath = searchpath_overrides(overrides)
    out: dict[str, list[str]] = {}
    with hydra_session() as loader:

        def walk(parent: str) -> None:
            for child in loader.get_group_options(parent, ObjectType.GROUP, CONFIG_NAME, searchpath):
                group = f"{parent}/{child}" if parent else child
                if group == "hydra":
                    continue
                found = loader.get_group_options(group, ObjectType.CONFIG, CONFIG_NAME, searchpath)
                if found:
                    out[group] = sorted(found)
                walk(group)

        walk("")
    return dict(sorted(out.items()))
