"""The library's imports point one way. ``lint-imports`` (in CI) enforces the layers in ``.importlinter`` over every
import statement, function-level and ``TYPE_CHECKING`` ones included; these tests keep that contract whole (every
module is in a layer), keep private names private, and check what importing a module actually loads."""

from __future__ import annotations

import ast
import configparser
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "eval_learn"
ABOVE = ("eval_learn.runners", "eval_learn.app", "eval_learn.engine.run", "eval_learn.__main__")
HEAVY = ("torch", "diffusers", "transformers", "matplotlib", "nudenet")
MODEL_CODE = ("eval_learn.techniques", *HEAVY)


def loaded_by(module: str) -> set[str]:
    code = f"import {module}, sys; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


def layered_modules() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    layers = parser["importlinter:contract:layers"]["layers"]
    return {name.strip() for line in layers.split("\n") for name in line.replace(":", "|").split("|") if name.strip()}


def test_every_module_of_the_package_is_in_a_layer() -> None:
    """A new top-level module or subpackage outside the layers would escape the contract unseen."""
    top = {f"eval_learn.{p.stem if p.is_file() else p.name}" for p in PACKAGE.iterdir()
           if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}  # fmt: skip
    assert top == layered_modules()


def test_no_module_imports_another_modules_private_name() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("eval_learn"):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]  # fmt: skip
    assert not offenders


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        pytest.param(
            "eval_learn.miniworld.train",
            ("eval_learn.metrics", "eval_learn.techniques", "eval_learn.engine", *ABOVE),
            marks=pytest.mark.slow,
        ),  # lint-imports checks the same in the fast tier
        pytest.param(
            "eval_learn.metrics.asr", (*ABOVE, "eval_learn.engine", "eval_learn.techniques"), marks=pytest.mark.slow
        ),
        ("eval_learn.techniques.esd", (*ABOVE, "eval_learn.metrics", "eval_learn.engine")),
        ("eval_learn.judges.nudenet", (*ABOVE, "eval_learn.metrics", "eval_learn.engine", "eval_learn.techniques")),
        ("eval_learn.datasets.i2p", (*ABOVE, "eval_learn.metrics", "eval_learn.engine", "eval_learn.techniques")),
        ("eval_learn.settings", (*ABOVE, "eval_learn.metrics", "eval_learn.engine", "eval_learn.techniques")),
        # The command line's own module loads no model code: --help, --cfg, summarize and config errors answer without
        # torch (a run imports the runners when it starts).
        (
            "eval_learn.__main__",
            (*ABOVE[:3], "eval_learn.engine", "eval_learn.metrics", "eval_learn.judges", *MODEL_CODE),
        ),
    ],
)
def test_importing_a_module_loads_nothing_above_it(module, forbidden) -> None:
    wrong = sorted(m for m in loaded_by(module) if m.startswith(forbidden))
    assert not wrong, f"{module} pulls {wrong}"


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("eval_learn.artifacts", "eval_learn.run_id", "make_run_id"),
        ("eval_learn.summary", "eval_learn.engine.headline", "summary_lines"),
        ("eval_learn.engine.store", "eval_learn.engine.image_store", "Store"),
    ],
)
def test_a_renamed_modules_old_path_still_works_and_says_where_it_went(old, new, name, monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=new):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
