"""The recipe mechanism (eval_learn.recipes): a technique's default YAML is one release recipe, every other recipe is
``technique=<name>/<recipe>``; each records what it follows and where it differs, and per-model presets still apply."""

from __future__ import annotations

import pytest
import yaml
from conftest import run_cli
from test_configs import compose_run

from eval_learn.app import build_runner
from eval_learn.catalog import catalog, render
from eval_learn.errors import ConfigError
from eval_learn.models import CONF_DIR
from eval_learn.recipes import find_recipe, read_info, recipe_options
from eval_learn.runners import SingleBenchmarkRunner

TECHNIQUE_DIR = CONF_DIR / "technique"
DEFAULTS = sorted(p.stem for p in TECHNIQUE_DIR.glob("*.yaml"))
RECIPES = sorted(f"{p.parent.name}/{p.stem}" for p in TECHNIQUE_DIR.glob("*/*.yaml"))


def test_there_are_recipes_to_test() -> None:
    assert "esd/esd_x" in RECIPES


@pytest.mark.parametrize("option", DEFAULTS + RECIPES)
def test_every_technique_yaml_states_its_provenance_validly(option: str) -> None:
    name, _, recipe = option.partition("/")
    path = TECHNIQUE_DIR / (f"{name}/{recipe}.yaml" if recipe else f"{name}.yaml")
    data = yaml.safe_load(path.read_text())
    info = read_info(data, option)  # may lack the keys (recipe None), but what it has is well formed
    if recipe:
        assert data["defaults"] == [f"/technique/{name}@_here_", "_self_"] and info.recipe == recipe
    assert find_recipe(option) is not None


@pytest.mark.parametrize("option", RECIPES)
def test_a_recipe_composes_over_its_default_and_validates(option: str) -> None:
    name, _, recipe = option.partition("/")
    data = compose_run([f"technique={option}", "model=tiny", "metric=asr", "~preset"])
    assert data["technique"]["name"] == name and data["technique"]["recipe"] == recipe
    # What Hydra composes and what the Python API reads are the same config.
    assert data["technique"]["config"] == find_recipe(option).config
    if option.startswith(("mace/", "ca/", "safree/")):  # no offline ASR judge for their artists, celebrities, objects
        from eval_learn.configs import from_mapping
        from eval_learn.registry import TECHNIQUES

        from_mapping(TECHNIQUES.get(name).config_cls, data["technique"]["config"], name)
        return
    runner = build_runner(compose_run([f"technique={option}", "model=tiny", "metric=asr"]))  # as the CLI runs it
    assert runner.technique_name == name and runner.recipe.record()["option"] == option


def test_per_model_presets_apply_to_every_recipe_of_the_technique() -> None:
    data = compose_run(["technique=esd/esd_x", "model=tiny", "metric=asr"])
    config = data["technique"]["config"]
    assert config["train_method"] == "xattn"  # the recipe
    tiny = yaml.safe_load((CONF_DIR / "preset" / "tiny_esd.yaml").read_text())["technique"]["config"]
    assert {k: config[k] for k in tiny} == tiny  # conf/preset/tiny_esd.yaml, keyed by the technique
    over = compose_run(["technique=esd/esd_x", "model=tiny", "metric=asr", "technique.config.train_steps=7"])
    assert over["technique"]["config"]["train_steps"] == 7  # the command line still wins


def test_the_python_api_takes_a_recipe_as_name_slash_recipe(tmp_path) -> None:
    runner = SingleBenchmarkRunner("esd/esd_x", "asr", None, {"limit": 2}, output_dir=tmp_path, model="tiny")
    tiny = yaml.safe_load((CONF_DIR / "preset" / "tiny_esd.yaml").read_text())["technique"]["config"]
    assert runner.technique_name == "esd" and runner.technique_config.train_method == "xattn"
    assert runner.technique_config.train_steps == tiny["train_steps"]
    assert runner.recipe.record()["recipe"] == "esd_x"
    default = SingleBenchmarkRunner("esd", "asr", None, {"limit": 2}, output_dir=tmp_path, model="tiny")
    assert default.recipe.option == "esd" and default.recipe.info.recipe == find_recipe("esd").info.recipe
    with pytest.raises(ConfigError, match=r"unknown technique recipe 'esd/esd_xx'\. Did you mean 'esd/esd_x'\?"):
        SingleBenchmarkRunner("esd/esd_xx", "asr", None, {"limit": 2}, output_dir=tmp_path, model="tiny")


def test_a_run_config_with_an_unknown_recipe_or_bad_provenance_is_refused() -> None:
    data = compose_run(["model=tiny", "metric=asr"])
    data["technique"]["recipe"] = "compvis_nudityy"
    with pytest.raises(ConfigError, match="unknown technique recipe"):
        build_runner(data)
    data = compose_run(["model=tiny", "metric=asr"])
    data["technique"]["follows"] = {"repo": "a/b", "commit": "abc", "file": "x.py"}
    with pytest.raises(ConfigError, match="40-hex"):
        build_runner(data)


def test_unknown_recipe_on_the_command_line_is_one_line_and_exit_2(tmp_path) -> None:
    out = tmp_path / "x"
    proc = run_cli("model=tiny", "technique=esd/esd_y", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "unknown technique recipe 'esd/esd_y'. Did you mean 'esd/esd_x'?" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and not out.exists()


def test_a_technique_yaml_without_the_recipe_keys_still_runs(tmp_path) -> None:
    (tmp_path / "technique" / "bare").mkdir(parents=True)
    (tmp_path / "technique" / "bare.yaml").write_text("name: bare\nconfig: {a: 1}\n")
    (tmp_path / "technique" / "bare" / "other.yaml").write_text(
        "defaults:\n  - /technique/bare@_here_\n  - _self_\nrecipe: other\nconfig: {b: 2}\n"
    )
    searchpath = [f"hydra.searchpath=[file://{tmp_path}]"]  # a folder on the search path, as a plugin adds one
    bare = find_recipe("bare", searchpath)
    assert bare.info.recipe is None and bare.info.follows is None and bare.info.differs == []
    other = find_recipe("bare/other", searchpath)
    assert other.config == {"a": 1, "b": 2} and other.record()["option"] == "bare/other"
    assert recipe_options("bare", searchpath) == ["other"] and find_recipe("plugin_only") is None
    assert find_recipe("bare") is None  # not on the default search path


def test_list_shows_each_techniques_recipes() -> None:
    text = render({"techniques": catalog()["techniques"]})
    default = find_recipe("esd").info.recipe
    assert f"recipes: esd (default: {default}" in text and "esd/esd_x" in text
