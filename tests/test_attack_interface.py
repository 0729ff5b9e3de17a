"""The attack interface (eval_learn.attacks.base): what an attack's cache key depends on, and its budget."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from eval_learn.attacks.base import Attack, AttackConfig
from eval_learn.configs import from_mapping
from eval_learn.errors import ConfigError


@dataclass
class SearchConfig(AttackConfig):
    iterations: int = 10


class Search(Attack):
    name = "search"
    config_cls = SearchConfig


def test_the_fingerprint_follows_the_config_and_the_algorithm_version() -> None:
    base = Search(SearchConfig())
    assert base.fingerprint() == Search(SearchConfig()).fingerprint()
    assert base.fingerprint() != Search(SearchConfig(iterations=11)).fingerprint()
    assert base.fingerprint() != Search(SearchConfig(seed=1)).fingerprint()
    newer = type("Newer", (Search,), {"algorithm_version": 2})(SearchConfig())
    assert base.fingerprint() != newer.fingerprint()
    assert base.settings() == {"attack": "search", "algorithm_version": 1, "time_limit_s": None, "seed": 0,
                               "iterations": 10}  # fmt: skip


def test_the_time_budget() -> None:
    with pytest.raises(ConfigError, match="time_limit_s must be > 0"):
        from_mapping(SearchConfig, {"time_limit_s": 0}, "attack")
    started = time.perf_counter()
    assert not Search(SearchConfig()).out_of_time(started - 1e6)  # no limit: never out of time
    assert Search(SearchConfig(time_limit_s=1.0)).out_of_time(started - 2.0)
    assert not Search(SearchConfig(time_limit_s=60.0)).out_of_time(started)
