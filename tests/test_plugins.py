"""Plugins: a package that is not eval_learn adds a technique (an entry point in ``eval_learn.techniques``) and its
configs (a Hydra search-path plugin under ``hydra_plugins``); ``eval-learn list`` shows it beside the built-ins and a
run selects it like any other. The package is faked as an installed one: its modules and a ``*.dist-info`` folder
with ``entry_points.txt`` on PYTHONPATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_cli

from eval_learn.errors import ConfigError

TECHNIQUE = '''
"""A sampling-time technique from outside eval_learn: the erased word as the negative prompt."""
from dataclasses import dataclass
from typing import Any

from eval_learn.techniques.base import Technique, TechniqueConfig


@dataclass
class NegativeWordConfig(TechniqueConfig):
    word: str = "nudity"

    def erased_concepts(self) -> list[str]:
        return [self.word]


class NegativeWord(Technique):
    name = "negative_word"
    config_cls = NegativeWordConfig

    def sampling_arguments(self, pipe: Any, prompts: list[str]) -> dict[str, Any]:
        return {"negative_prompt": [self.config.word] * len(prompts)}

    def sampling_settings(self) -> dict[str, Any]:
        return {"plugin_negative_word": self.config.word}
'''

SEARCH_PATH = """
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class DemoPluginSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="el-demo-plugin", path="pkg://el_demo_plugin.conf")
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    write(root / "el_demo_plugin" / "__init__.py", "")
    write(root / "el_demo_plugin" / "technique.py", TECHNIQUE)
    write(root / "el_demo_plugin" / "conf" / "__init__.py", "")
    write(root / "el_demo_plugin" / "conf" / "technique" / "negative_word.yaml", """
        name: negative_word
        config:
          num_inference_steps: null
          guidance_scale: null
          device: null
          word: nudity
        """)  # fmt: skip
    write(root / "el_demo_plugin" / "conf" / "model" / "tiny_fast.yaml", """
        name: tiny_fast
        id: tiny
        revision: null
        num_inference_steps: 2
        guidance_scale: 5.0
        height: 64
        width: 64
        default_concept: nudity
        default_datasets:
          asr: demo
        """)  # fmt: skip
    write(root / "el_demo_plugin" / "conf" / "preset" / "tiny_fast_negative_word.yaml", """
        # @package _global_
        technique:
          config:
            guidance_scale: 3.0
        """)  # fmt: skip
    write(root / "el_demo_plugin" / "conf" / "protocol" / "plugin_nudity_demo.yaml", """
        name: plugin_nudity_demo
        metric: asr
        concepts: [nudity]
        prompts: {name: demo}
        judge: {name: nudenet, preset: unlearndiffatk}
        counting: image
        source: {paper: a plugin's protocol}
        """)  # fmt: skip
    write(root / "hydra_plugins" / "el_demo_plugin_searchpath" / "__init__.py", SEARCH_PATH)
    dist = root / "el_demo_plugin-0.1.dist-info"
    write(dist / "METADATA", "Metadata-Version: 2.1\nName: el-demo-plugin\nVersion: 0.1\n")
    write(dist / "entry_points.txt", "[eval_learn.techniques]\nnegative_word = el_demo_plugin.technique:NegativeWord\n")
    return root


def with_plugin(plugin: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(plugin), os.environ.get("PYTHONPATH")) if p)}


@pytest.mark.slow
def test_list_shows_built_ins_and_the_plugin(plugin: Path, tmp_path: Path) -> None:
    proc = run_cli("list", cwd=tmp_path, env=with_plugin(plugin))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    blocks = dict(b.split("\n", 1) for b in out.strip().split("\n\n"))
    heads = {k.split(" (")[0]: v for k, v in blocks.items()}
    assert set(heads) == {"techniques", "metrics", "judges", "prompt sets", "attacks", "models", "protocols"}
    assert "nudity_i2p               built-in" in heads["protocols"]
    assert "plugin_nudity_demo       search path" in heads["protocols"]
    assert "esd " in heads["techniques"] and 'train_method: TrainMethod = "noxattn"' in heads["techniques"]
    assert "negative_word            plugin el-demo-plugin 0.1  el_demo_plugin.technique:NegativeWord" in out
    assert 'word: str = "nudity"' in heads["techniques"] and "not selectable" not in out
    assert "asr " in heads["metrics"] and "limit: int | None = null" in heads["metrics"]
    assert "nudenet " in heads["judges"] and "threshold: float | None = null" in heads["judges"]
    assert "i2p " in heads["prompt sets"] and "demo " in heads["prompt sets"]
    assert "sd14                     built-in" in heads["models"]
    assert "tiny_fast                search path" in heads["models"] and "num_inference_steps = 2" in heads["models"]


@pytest.mark.slow
def test_a_run_with_the_plugin_technique(plugin: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli("model=tiny", "technique=negative_word", "technique.config.word=nudity", "metric=asr",
                   "metric.config.limit=1", "metric.config.protocol=plugin_nudity_demo", f"hydra.run.dir={out}",
                   cwd=tmp_path, env=with_plugin(plugin))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report,) = out.glob("*/report.json")
    data = json.loads(report.read_text())
    assert data["technique_name"] == "negative_word" and data["technique_config"]["word"] == "nudity"
    protocol = data["metric_result"]["details"]["protocol"]  # the plugin's protocol picked the judge preset
    assert protocol["name"] == "plugin_nudity_demo" and protocol["origin"].startswith("search path")
    assert data["judge"]["preset"] == "unlearndiffatk" and protocol["differences"] == []
    assert data["generation"]["sampling"] == {"plugin_negative_word": "nudity"}
    (image,) = json.loads((report.parent / "metadata.json").read_text())["images"]
    assert image["sampling"] == {"plugin_negative_word": "nudity"}  # the plugin's class made the image


API_AND_CLI = """
import dataclasses, json, sys
import yaml
from eval_learn.app import build_runner
from eval_learn.errors import ConfigError
from eval_learn.runners import SingleBenchmarkRunner

def resolved(runner):
    return {"model": dataclasses.asdict(runner.context.model), "technique": dataclasses.asdict(runner.technique_config),
            "recipe": runner.recipe.record() if runner.recipe else None}

cli = build_runner(yaml.safe_load(sys.stdin.read()) | {"output_dir": sys.argv[1]})
api = SingleBenchmarkRunner("negative_word", "asr", output_dir=sys.argv[1], model="tiny_fast")
try:
    SingleBenchmarkRunner("negative_word", "asr", output_dir=sys.argv[1], model="tiny_fsat")
    error = None
except ConfigError as err:
    error = str(err)
print(json.dumps({"cli": resolved(cli), "api": resolved(api), "error": error}))
"""


def test_a_plugins_model_technique_and_preset_resolve_the_same_from_the_api_and_the_cli(plugin: Path, tmp_path) -> None:
    """The plugin's model, technique YAML and per-model preset (on Hydra's search path through its search-path
    plugin) are found by the Python API as by the command line, and resolve to the same configs."""
    env = {**os.environ, **with_plugin(plugin)}
    args = ("model=tiny_fast", "technique=negative_word", "metric=asr", "--cfg", "job")
    composed = run_cli(*args, cwd=tmp_path, env=with_plugin(plugin))
    assert composed.returncode == 0, composed.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-c", API_AND_CLI, str(tmp_path / "out")], input=composed.stdout, env=env,
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["api"] == data["cli"]
    assert data["api"]["model"]["name"] == "tiny_fast" and data["api"]["model"]["num_inference_steps"] == 2
    assert data["api"]["technique"]["guidance_scale"] == 3.0  # the plugin's preset for its model
    assert data["error"].startswith("Unknown model 'tiny_fsat'. Did you mean 'tiny_fast'?")
    assert "\n" not in data["error"]


def test_hydra_searchpath_adds_config_folders(tmp_path: Path) -> None:
    """A folder of configs given with hydra.searchpath is seen by the option check (not only by Hydra)."""
    from eval_learn.catalog import config_options
    from eval_learn.cli.arguments import parse_overrides
    from eval_learn.cli.precheck import check_group_choices

    write(tmp_path / "conf" / "model" / "my_model.yaml", "name: my_model\nid: tiny\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    assert "my_model" in config_options("model", [searchpath]) and "my_model" not in config_options("model")
    argv = [searchpath, "model=my_model"]
    check_group_choices(argv, parse_overrides(argv) or [])
    with pytest.raises(ConfigError, match="unknown model 'my_model'"):
        check_group_choices(["model=my_model"], parse_overrides(["model=my_model"]) or [])
