"""A part's config fields read from its source code, without importing its module.

``eval-learn list`` shows every technique's, metric's, judge's and prompt set's settings; their modules import torch
(seconds), their config dataclasses do not need it. So the list reads each ``config_cls`` statically (the class body's
annotated fields, ``field(default=..., default_factory=...)``, base classes through their imports, ``unlisted``) and
imports a part only where its source says something this reader cannot evaluate (the catalog then imports it).
tests/test_catalog_fields.py holds this reader to ``dataclasses.fields`` of every registered part.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from typing import Any

Field = tuple[str, str, Any]  # (name, type as written, default)
REQUIRED = "(required)"
_FACTORIES: dict[str, Any] = {"list": list, "dict": dict, "set": set, "tuple": tuple}


class Unreadable(Exception):
    """The source says something only running it can tell."""


@functools.cache
def _module(name: str) -> tuple[ast.Module, str]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise Unreadable(f"no Python source for {name}")
    with open(spec.origin, encoding="utf-8") as f:
        source = f.read()
    return ast.parse(source), source


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` in ``module`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    spec = importlib.util.find_spec(module)
    parts = module.split(".")
    keep = len(parts) - node.level + (1 if spec is not None and spec.submodule_search_locations is not None else 0)
    return ".".join([*parts[:keep], *([node.module] if node.module else [])])


def _find_class(module: str, name: str) -> tuple[str, ast.ClassDef]:
    """The class ``name`` as seen from ``module``: defined there, or imported into it."""
    tree, _ = _module(module)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _find_class(_absolute(module, node), alias.name)
    raise Unreadable(f"class {name} not found in {module}")


def _bases(module: str, cls: ast.ClassDef) -> list[tuple[str, ast.ClassDef]]:
    out = []
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id not in ("object", "Generic", "Protocol", "ABC"):
            out.append(_find_class(module, base.id))
        elif not isinstance(base, (ast.Name, ast.Subscript)):
            raise Unreadable(f"base {ast.dump(base)} of {cls.name}")
    return out


def _value(module: str, node: ast.expr) -> Any:
    """A default's value: a literal, or a module constant that is one."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FACTORIES:
        if len(node.args) == 1 and not node.keywords:  # list(DEFAULTS), tuple(...)
            return _FACTORIES[node.func.id](_value(module, node.args[0]))
    if isinstance(node, ast.Name):
        tree, _ = _module(module)
        for stmt in tree.body:
            targets = (
                stmt.targets
                if isinstance(stmt, ast.Assign)
                else [stmt.target]
                if isinstance(stmt, ast.AnnAssign)
                else []
            )
            if any(isinstance(t, ast.Name) and t.id == node.id for t in targets) and stmt.value is not None:  # type: ignore[union-attr]
                return _value(module, stmt.value)  # type: ignore[union-attr]
    raise Unreadable(f"default {ast.unparse(node)} in {module}")


def _factory(module: str, node: ast.expr) -> Any:
    if isinstance(node, ast.Name) and node.id in _FACTORIES:
        return _FACTORIES[node.id]()
    if isinstance(node, ast.Lambda):
        return _value(module, node.body)
    if isinstance(node, ast.Name):  # a nested config dataclass: its fields' defaults, as dataclasses.asdict gives
        return {name: default for name, _, default in _fields(*_find_class(module, node.id))}
    raise Unreadable(f"default_factory {ast.unparse(node)} in {module}")


def _fields(module: str, cls: ast.ClassDef) -> list[Field]:
    """Dataclass fields in dataclass order: the bases' first, a redefined field keeping its place."""
    fields: dict[str, Field] = {}
    for base in reversed(_bases(module, cls)):
        fields.update({f[0]: f for f in _fields(*base)})
    for stmt in cls.body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        kind = ast.unparse(stmt.annotation)  # as dataclasses holds it under `from __future__ import annotations`
        if kind.startswith(("ClassVar", "typing.ClassVar")):
            continue
        name, value = stmt.target.id, stmt.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
            keywords = {k.arg: k.value for k in value.keywords}
            if "init" in keywords and _value(module, keywords["init"]) is False:
                fields.pop(name, None)
                continue
            if "default" in keywords:
                fields[name] = (name, kind, _value(module, keywords["default"]))
            elif "default_factory" in keywords:
                fields[name] = (name, kind, _factory(module, keywords["default_factory"]))
            else:
                fields[name] = (name, kind, REQUIRED)
        else:
            fields[name] = (name, kind, REQUIRED if value is None else _value(module, value))
    return list(fields.values())


def _class_attribute(module: str, cls: ast.ClassDef, attribute: str) -> tuple[str, ast.expr] | None:
    for stmt in cls.body:
        targets = (
            stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == attribute for t in targets) and stmt.value is not None:  # type: ignore[union-attr]
            return module, stmt.value  # type: ignore[union-attr]
    for base in _bases(module, cls):
        found = _class_attribute(*base, attribute)
        if found is not None:
            return found
    return None


def config_fields_of(target: str) -> list[Field]:
    """(name, type, default) of each field of the config of the part at ``module:Class`` (its ``config_cls``), less
    those it refuses (``unlisted``). Raises :class:`Unreadable` where only importing the part can tell."""
    module, _, name = target.partition(":")
    where, cls = _find_class(module, name)
    found = _class_attribute(where, cls, "config_cls")
    if found is None or not isinstance(found[1], ast.Name):
        raise Unreadable(f"no config_cls in {target}")
    config_module, config_cls = _find_class(found[0], found[1].id)
    unlisted = _class_attribute(config_module, config_cls, "unlisted")
    hidden = set(_value(*unlisted)) if unlisted is not None else set()
    return [f for f in _fields(config_module, config_cls) if f[0] not in hidden]


def class_attribute_of(target: str, attribute: str) -> Any:
    """A literal class attribute (``follows``) of the part at ``module:Class``, read from the source; None when the
    class and its bases do not set it."""
    module, _, name = target.partition(":")
    found = _class_attribute(*_find_class(module, name), attribute)
    return None if found is None else _value(*found)
