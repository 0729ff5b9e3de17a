"""The config fields ``eval-learn list`` reads from source (eval_learn.config_fields) are the dataclass fields."""

from __future__ import annotations

import pytest

from eval_learn.catalog import config_fields
from eval_learn.config_fields import Unreadable, config_fields_of
from eval_learn.registry import JUDGES, METRICS, PROMPT_SETS, TECHNIQUES

PARTS = [(registry, name) for registry in (TECHNIQUES, METRICS, JUDGES, PROMPT_SETS) for name in registry.names()]


@pytest.mark.parametrize(("registry", "name"), PARTS, ids=[f"{r.kind}-{n}" for r, n in PARTS])
def test_fields_read_from_source_equal_the_dataclass_fields(registry, name) -> None:
    try:
        static = config_fields_of(registry.target(name))
    except Unreadable:
        # Only classes made at run time may be unreadable, and their module must be light (the list imports it).
        assert registry.group == "eval_learn.prompt_sets", f"{name} should be readable from its source"
        return
    assert static == config_fields(registry.get(name).config_cls)


def test_every_technique_metric_and_judge_is_read_from_source() -> None:
    for registry in (TECHNIQUES, METRICS, JUDGES):
        for name in registry.names():
            assert config_fields_of(registry.target(name))  # raises Unreadable otherwise


def test_unreadable_source_says_so(tmp_path, monkeypatch) -> None:
    (tmp_path / "el_dyn_part.py").write_text(
        "from dataclasses import dataclass\n"
        "import os\n"
        "@dataclass\nclass C:\n    x: int = os.cpu_count()\n"
        "class Part:\n    config_cls = C\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Unreadable, match="os.cpu_count"):
        config_fields_of("el_dyn_part:Part")
