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

from eval_learn.configs import did_you_mean, from_mapping
from eval_learn.errors import ConfigError
from eval_learn.models import CONF_DIR, ModelSpec
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
    return tuple(sorted(_listing(group, searchpath, config=True)))


def _listing(group: str, searchpath: Sequence[str], config: bool) -> set[str]:
    """The configs (or subgroups) of ``group``. Without ``hydra.searchpath`` overrides, read from the search path's
    sources directly: Hydra's loader copies its whole repository for every question (tens of ms each)."""
    from hydra.core.object_type import ObjectType

    kind = ObjectType.CONFIG if config else ObjectType.GROUP
    with hydra_session() as loader:
        if searchpath:
            return set(loader.get_group_options(group, kind, CONFIG_NAME, list(searchpath)))
        return {o for source in loader.get_sources() if source.is_group(group) for o in source.list(group, kind)}


@functools.lru_cache(maxsize=256)
def _compose(option: str, searchpath: tuple[str, ...]) -> dict[str, Any]:
    """The config ``+<group>=<name>`` composes alone (its own defaults list included), resolved; once per process
    (a sweep's validation builds a runner per job). The command line composes the same files into ``config.yaml``
    (model, then technique, then the optional preset), so merging these in that order gives what it gives."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with hydra_session():
            return OmegaConf.to_container(compose(None, overrides=[*searchpath, f"+{option}"]), resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(str(err).strip().split("\n")[0]) from None


def model_config(name: str, overrides: Sequence[str] = ()) -> dict[str, Any] | None:
    """``model/<name>.yaml`` as the run config composes it, or None when no such option is on the search path."""
    searchpath = tuple(searchpath_overrides(overrides))
    if name not in _options("model", searchpath):
        return None
    return copy.deepcopy(_compose(f"model={name}", searchpath)["model"])


def model_spec(model: str | Mapping[str, Any] | ModelSpec, overrides: Sequence[str] = ()) -> tuple[ModelSpec, str]:
    """The base model a run names (a model option, a hub id or local folder, a mapping, a ModelSpec) and the name
    that keys its per-model presets (``preset/<name>_<technique>.yaml``). A name that is none of these is a
    ConfigError naming the nearest model option."""
    if isinstance(model, ModelSpec):
        return model, model.name
    if isinstance(model, Mapping):
        spec = from_mapping(ModelSpec, model, "model")
        return spec, spec.name
    config = model_config(model, overrides)
    if config is not None:
        return from_mapping(ModelSpec, config, "model"), model
    if "/" in model or os.path.isdir(model):
        return from_mapping(ModelSpec, {"name": model, "id": model}, "model"), model
    names = options("model", overrides)
    raise ConfigError(f"Unknown model '{model}'.{did_you_mean(model, names)} Use one of {names}, a hub id such as "
                      f"'CompVis/stable-diffusion-v1-4', or a local folder.")  # fmt: skip


def resolve_model(model: str | Mapping[str, Any] | ModelSpec, overrides: Sequence[str] = ()) -> ModelSpec:
    """The ModelSpec of a model option (``tiny``, a plugin's), hub id, local folder, mapping or ModelSpec, composed as
    the command line composes it (:func:`model_spec`)."""
    return model_spec(model, overrides)[0]


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
    selected = name
    if recipe:
        recipes = _options(f"technique/{name}", searchpath)
        if recipe in recipes:
            selected = option
        elif recipe != _compose(f"technique={name}", searchpath)["technique"].get("recipe"):
            available = [name, *(f"{name}/{r}" for r in recipes)]
            raise ConfigError(f"unknown technique recipe '{option}'.{did_you_mean(option, available)} "
                              f"Recipes of {name}: {', '.join(available)}")  # fmt: skip
    node = copy.deepcopy(_compose(f"technique={selected}", searchpath)["technique"])
    preset = f"{model}_{name}"
    if model is not None and model in _options("model", searchpath) and preset in _options("preset", searchpath):
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(
            OmegaConf.merge(node, _compose(f"preset={preset}", searchpath).get("technique", {}))
        )
    return node  # type: ignore[return-value]


def config_groups(overrides: Sequence[str] = ()) -> dict[str, list[str]]:
    """Every config group of the run (``technique``, ``technique/esd``, ``model``, ...; not Hydra's own) on the search
    path, with its options: what ``--help`` lists."""
    searchpath = tuple(searchpath_overrides(overrides))
    out: dict[str, list[str]] = {}

    def walk(parent: str) -> None:
        for child in sorted(_listing(parent, searchpath, config=False)):
            group = f"{parent}/{child}" if parent else child
            if group == "hydra":
                continue
            found = _options(group, searchpath)
            if found:
                out[group] = list(found)
            walk(group)

    walk("")
    return dict(sorted(out.items()))
