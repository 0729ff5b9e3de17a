"""What can be run: every technique, metric, judge, prompt set, model config and protocol, built in or from a plugin
package (``eval-learn list``), and the config options on Hydra's search path.

A plugin package adds a part in two places, both found here: the class, through an entry point in the group of its
kind (``eval_learn.techniques``, ``eval_learn.metrics``, ``eval_learn.judges``, ``eval_learn.prompt_sets``), and for a
technique or metric its YAML (``technique/<name>.yaml``; ``metric/<name>.yaml`` and ``metrics/<name>.yaml``; a
protocol is a YAML only, ``protocol/<name>.yaml``), in a
config folder that a Hydra search-path plugin (a module under the ``hydra_plugins`` namespace package) or
``hydra.searchpath=[...]`` on the command line puts on Hydra's search path.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

from eval_learn.compose import model_config, options
from eval_learn.config_fields import Unreadable, class_attribute_of, config_fields_of
from eval_learn.errors import ConfigError
from eval_learn.models.locations import CONF_DIR
from eval_learn.recipes import find_recipe
from eval_learn.registry import ATTACKS, JUDGES, METRICS, PROMPT_SETS, TECHNIQUES, Registry

# (heading, registry, config group that selects it, how it is selected)
KINDS: dict[str, tuple[Registry[Any], str | None, str]] = {
    "techniques": (TECHNIQUES, "technique", "technique=NAME, or technique=NAME/RECIPE"),
    "metrics": (METRICS, "metric", "metric=NAME, or metrics=[NAME,...]"),
    "judges": (JUDGES, None, "metric.config.judge=NAME"),
    "prompt_sets": (PROMPT_SETS, None, "metric.config.prompts=NAME"),
    "attacks": (ATTACKS, None, "metric.config.attack=NAME or {name: NAME, <settings>}, on asr"),
}


def config_options(group: str, overrides: Sequence[str] = ()) -> list[str]:
    """The options of a config group on Hydra's search path: our ``conf/``, every search-path plugin's folders and
    ``hydra.searchpath`` in ``overrides``."""
    return options(group, overrides)


def model_configs(overrides: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Every ``model/<name>.yaml`` on the search path, as the run config composes it."""
    out: dict[str, dict[str, Any]] = {}
    for name in options("model", overrides):
        try:
            out[name] = model_config(name, overrides) or {}
        except ConfigError as err:  # one broken file is listed with its error
            out[name] = {"error": str(err)}
    return out


def _origin(registry: Registry[Any], name: str, target: str) -> str:
    if target.startswith("eval_learn."):
        return "built-in"
    for ep in entry_points(group=registry.group):
        if ep.name == name:
            dist = getattr(ep, "dist", None)
            return f"plugin {dist.name} {dist.version}" if dist is not None else f"plugin ({ep.value})"
    return "registered in code"


def config_fields(config_cls: Any) -> list[tuple[str, str, Any]]:
    """(name, type, default) of every field of a config dataclass, less those it refuses (``unlisted``)."""
    out = []
    for f in dataclasses.fields(config_cls):
        if not f.init or f.name in getattr(config_cls, "unlisted", ()):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):  # a nested part of the config (err's arms): its fields
                default = dataclasses.asdict(default)
        else:
            default = "(required)"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))  # as written
        out.append((f.name, kind, default))
    return out


def technique_recipes(name: str, overrides: Sequence[str] = ()) -> list[str]:
    """The options that select a technique's recipes: ``name`` (the default, with its recipe's name and the release
    it follows) and ``name/<recipe>`` for each other recipe on the search path."""
    try:
        default = find_recipe(name)
    except ConfigError as err:  # a broken YAML is listed with its error
        return [f"{name} ({err})"]
    head = name
    if default is not None and default.info.recipe:
        follows = default.info.follows
        head += f" (default: {default.info.recipe}" + (f", follows {follows.repo}@{follows.commit[:7]})" if follows
                                                         else ")")  # fmt: skip
    return [head, *(f"{name}/{r}" for r in config_options(f"technique/{name}", overrides))]


def catalog(overrides: Sequence[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """Every part by kind: name, origin, class, config fields, whether its YAML is on the search path."""
    result: dict[str, list[dict[str, Any]]] = {}
    for kind, (registry, group, _) in KINDS.items():
        yaml_names = set(config_options(group, overrides)) if group else None
        entries = []
        for name in registry.names():
            entry: dict[str, Any] = {"name": name}
            cls: Any = None  # set below only when the source cannot be read (listing imports no model code)
            try:
                target = registry.target(name)
                fields = config_fields_of(target)  # read from the source: listing imports no model code
            except Unreadable:
                try:
                    cls = registry.get(name)
                except Exception as err:  # noqa: BLE001 - a plugin that fails to import is listed with its error
                    entry.update(origin="plugin", error=f"cannot be loaded: {type(err).__name__}: {err}")
                    entries.append(entry)
                    continue
                target, fields = f"{cls.__module__}:{cls.__qualname__}", config_fields(cls.config_cls)
            entry.update(origin=_origin(registry, name, target), target=target, fields=fields)
            if yaml_names is not None:
                entry["yaml"] = name in yaml_names
            if kind == "techniques" and entry.get("yaml"):
                entry["recipes"] = technique_recipes(name, overrides)
            if kind == "techniques":
                entry["presets"] = technique_presets(name)
            if kind == "attacks":
                try:
                    follows = class_attribute_of(target, "follows")
                except Unreadable:
                    follows = registry.get(name).follows
                if follows:
                    entry["follows"] = follows
            entries.append(entry)
        if yaml_names is not None:  # a YAML without a class: selectable, but it will fail
            for name in sorted(yaml_names - set(registry.names())):
                entries.append({"name": name, "origin": "config only", "error": f"no {registry.kind} class named "
                                f"'{name}' is registered (entry point group {registry.group})"})  # fmt: skip
        result[kind] = entries
    models = []
    for name, data in model_configs(overrides).items():
        origin = "built-in" if (CONF_DIR / "model" / f"{name}.yaml").is_file() else "search path"
        models.append({"name": name, "origin": origin, **({"error": data["error"]} if "error" in data else
                                                          {"fields": [(k, "", v) for k, v in data.items()]})})  # fmt: skip
    result["models"] = models
    result["protocols"] = protocol_entries(overrides)
    return result


def protocol_entries(overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every protocol YAML on the search path (``protocol/<name>.yaml``), with what it names."""
    from eval_learn import protocols
    from eval_learn.errors import ConfigError

    try:
        found = protocols.load(protocols.folders(overrides))
    except ConfigError as err:  # a broken protocol file is listed, not fatal
        return [{"name": "(protocols)", "origin": "search path", "error": str(err)}]
    entries = []
    for name, p in found.items():
        fields: list[tuple[str, str, Any]] = [("metric", "", p.metric),
                                              ("concepts", "", [*p.concepts, *(f"kind:{k}" for k in p.concept_kinds)]),
                                              ("default", "", p.default)]  # fmt: skip
        fields += [(key, "", value) for key, value in (("prompts", p.prompts), ("judge", p.judge),
                   ("samples_per_prompt", p.samples_per_prompt), ("stand_in", p.stand_in)) if value is not None]  # fmt: skip
        fields += [(f"arms.{arm}", "", spec) for arm, spec in p.arms.items()]
        fields += [("counting", "", p.counting), ("source", "", p.source)]
        entries.append({"name": name, "origin": p.origin, "fields": fields})
    return entries


def technique_presets(technique: str) -> dict[str, dict[str, Any]]:
    """What ``model=<name>`` changes in a technique's defaults (``conf/preset/<model>_<technique>.yaml``), by model:
    the class defaults listed are the paper's, and a model's preset replaces some of them."""
    from omegaconf import OmegaConf

    out = {}
    for path in sorted((CONF_DIR / "preset").glob(f"*_{technique}.yaml")):
        model = path.stem.removesuffix(f"_{technique}")
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        out[model] = data.get("technique", {}).get("config", {})  # type: ignore[union-attr]
    return out


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def render(data: dict[str, list[dict[str, Any]]]) -> str:
    """The catalog as text, one block per kind, one line per config field."""
    how = {kind: selector for kind, (_, _, selector) in KINDS.items()} | {
        "models": "model=NAME",
        "protocols": "metric.config.protocol=NAME",
    }
    lines: list[str] = []
    for kind, entries in data.items():
        lines.append(f"{kind.replace('_', ' ')} ({how[kind]})")
        for entry in entries:
            head = f"  {entry['name']:<24} {entry['origin']}"
            if entry.get("target"):
                head += f"  {entry['target']}"
            if entry.get("yaml") is False:
                head += f"  [no {KINDS[kind][1]}/{entry['name']}.yaml on the config search path: not selectable]"
            lines.append(head)
            if entry.get("error"):
                lines.append(f"      ! {entry['error']}")
            if entry.get("recipes"):
                lines.append(f"      recipes: {', '.join(entry['recipes'])}")
            for field, kind_name, default in entry.get("fields", []):
                typed = f"{field}: {kind_name}" if kind_name else field
                lines.append(f"      {typed} = {_value(default)}")
            for model, preset in entry.get("presets", {}).items():
                lines.append(f"      with model={model} a preset applies (conf/preset/{model}_{entry['name']}.yaml): "
                             + ", ".join(f"{k}={_value(v)}" for k, v in preset.items()))  # fmt: skip
        lines.append("")
    return "\n".join(lines)
