"""Strict dataclass configs: unknown keys, wrong types and impossible values fail before any model loads.

The predecessor silently dropped unknown keys, so a typo such as ``trian_method`` ran the default and produced a
wrong number with no warning. Every technique, metric and model config here is a dataclass read through
:func:`from_mapping`, which rejects unknown keys (suggesting the nearest field), coerces only lossless types and
runs the class's ``validate()``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from eval_learn.errors import ConfigError

log = logging.getLogger(__name__)

C = TypeVar("C")

__all__ = ["ConfigError", "did_you_mean", "from_mapping", "require"]


def as_list(value: str | list[str]) -> list[str]:
    """A config field that takes one string or a list of them, as a list."""
    return [value] if isinstance(value, str) else list(value)


def one_each(values: str | list[str], count: int) -> list[str]:
    """A per-item setting given once for all ``count`` items, or once per item (checked by the caller)."""
    items = as_list(values)
    return items * count if len(items) == 1 else items


def check_concepts_and_targets(erase: str | list[str], targets: str | list[str], key: str, effect: str) -> None:
    """The erased concepts (one or a list: non-empty, distinct) and what they become (``key``: one for all or one
    each, none the concept itself, which would make ``effect`` change nothing)."""
    erased = as_list(erase)
    require(bool(erased), "erase_concept must name at least one concept")
    require(all(c.strip() for c in erased), f"erase_concept must not contain an empty concept, got {erased}")
    duplicates = sorted({c for c in erased if erased.count(c) > 1})
    require(not duplicates, f"erase_concept lists {duplicates} more than once")
    given = as_list(targets)
    require(bool(given), f"{key} must be a concept, '' (the empty prompt), or one per erased concept")
    require(len(given) in (1, len(erased)),
            f"{key} has {len(given)} entries for {len(erased)} erased concepts; give one for all or one per erased "
            f"concept")  # fmt: skip
    for concept, target in zip(erased, one_each(targets, len(erased)), strict=True):
        require(concept.strip().lower() != target.strip().lower(),
                f"{key} '{target}' is the erased concept itself: {effect} would change nothing")  # fmt: skip


def did_you_mean(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_mapping(tp, value, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{where}: {value!r} is not one of {list(choices)}.{did_you_mean(str(value), map(str, choices))}"
            )
        return value
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, typing.Sequence):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # paths from the Python API
            return os.fspath(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_mapping(cls: type[C], data: Mapping[str, Any] | None, where: str) -> C:
    """Build the dataclass ``cls`` from ``data``, strictly. ``where`` names the config in error messages."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for old, new in getattr(cls, "renamed_keys", {}).items():
        if old in data and new in fields:  # the shipped configs use the new name: the old one was given on purpose
            log.warning("%s: '%s' is deprecated, use '%s' (the value given as '%s' is used)", where, old, new, old)
            data[new] = data.pop(old)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"{where}: unknown key '{key}'.{did_you_mean(key, fields)} Valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required key '{name}' is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    return obj


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
