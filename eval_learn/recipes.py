"""A technique's recipes: the configurations its authors' release ships, each a config option of its own.

``conf/technique/<name>.yaml`` is the technique's DEFAULT recipe (the one that produced the published numbers for the
default concept); every other recipe of the release is ``conf/technique/<name>/<recipe>.yaml``, which builds on the
default (``defaults: [/technique/<name>@_here_, _self_]``) and sets only what differs. On the command line a recipe is
``technique=<name>/<recipe>``; in the Python API ``technique_name="<name>/<recipe>"``. Beside ``name`` and ``config``
every technique YAML says what it follows and where it departs from it:

    recipe: compvis_nudity                                     # the recipe's name (a subfolder file: its stem)
    follows: {repo: owner/name, commit: <40 hex>, file: <path>, config: <release config file or null>}
    differs: [one line per deliberate difference and why]      # [] when none; follows null: no release

These three keys are what a report records about the technique's provenance (``technique_recipe``). A technique YAML
that lacks them still runs (its recipe is then null), and a technique with no YAML in ``conf/`` (a plugin's class
registered in code) has no recipes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml
from omegaconf import OmegaConf

from eval_learn.configs import ConfigError, did_you_mean, from_mapping, require
from eval_learn.models.locations import CONF_DIR

RECIPE_KEYS = ("recipe", "follows", "differs")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class Follows:
    """The release a recipe follows: repository, commit, the file whose code it follows, and its config file."""

    repo: str
    commit: str
    file: str
    config: str | None = None

    def validate(self) -> None:
        require(self.repo.count("/") == 1 and all(self.repo.split("/")),
                f"follows.repo must be 'owner/name', got {self.repo!r}")  # fmt: skip
        require(bool(_COMMIT.fullmatch(self.commit)),
                f"follows.commit must be a full 40-hex commit, got {self.commit!r}")  # fmt: skip
        require(bool(self.file.strip()), "follows.file must name a file of the release")


@dataclass
class RecipeInfo:
    """The provenance keys of a technique YAML, strictly read (all optional: a YAML may not have them yet)."""

    recipe: str | None = None
    follows: Follows | None = None
    differs: list[str] = field(default_factory=list)

    def validate(self) -> None:
        require(self.recipe is None or bool(self.recipe.strip()), "recipe must be a name, not empty")
        require(all(isinstance(d, str) and d.strip() for d in self.differs), "differs must be a list of lines")


@dataclass
class Recipe:
    """A technique's recipe as selected: which option, its provenance and its whole technique config."""

    technique: str  # the registry name
    option: str  # the config option: "esd" (the default) or "esd/esd_sd"
    info: RecipeInfo
    config: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """What a report says about the technique's recipe."""
        return {"option": self.option, **asdict(self.info)}


def split_option(option: str) -> tuple[str, str | None]:
    """``"esd/esd_sd"`` → ``("esd", "esd_sd")``; ``"esd"`` → ``("esd", None)``."""
    name, _, recipe = option.partition("/")
    return name, (recipe or None)


def read_info(data: dict[str, Any], where: str) -> RecipeInfo:
    return from_mapping(RecipeInfo, {k: data[k] for k in RECIPE_KEYS if k in data}, where)


def recipe_options(name: str) -> list[str]:
    """The recipes a technique ships beside its default (the stems of ``conf/technique/<name>/*.yaml``)."""
    folder = CONF_DIR / "technique" / name
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _load(path: Any) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a technique config must be a mapping")
    return data


def find_recipe(option: str) -> Recipe | None:
    """The recipe ``option`` selects (``name`` = the default recipe, ``name/recipe`` = another; the default's own
    recipe name also selects it), or None when the technique has no YAML in ``conf/``. An unknown recipe is a
    ConfigError with the nearest name."""
    name, wanted = split_option(option)
    base_path = CONF_DIR / "technique" / f"{name}.yaml"
    if not base_path.is_file():
        if wanted is not None:
            raise ConfigError(f"unknown technique recipe '{option}': technique '{name}' has no recipes in {CONF_DIR}")
        return None
    base = _load(base_path)
    base_info = read_info(base, f"technique '{name}'")
    if wanted is None or wanted == base_info.recipe:
        return Recipe(name, name, base_info, dict(base.get("config") or {}))
    options = recipe_options(name)
    if wanted not in options:
        available = [name, *(f"{name}/{r}" for r in options)]
        raise ConfigError(f"unknown technique recipe '{option}'.{did_you_mean(option, available)} "
                          f"Recipes of {name}: {', '.join(available)}")  # fmt: skip
    path = CONF_DIR / "technique" / name / f"{wanted}.yaml"
    data = _load(path)
    expected = [f"/technique/{name}@_here_", "_self_"]
    if data.get("defaults") != expected:
        raise ConfigError(f"{path}: a recipe must start with 'defaults: {expected}' (it builds on the default)")
    info = read_info({**{k: base[k] for k in RECIPE_KEYS if k in base}, **data}, f"technique '{option}'")
    if info.recipe != wanted:
        raise ConfigError(f"{path}: its 'recipe' must be its file name '{wanted}', got {info.recipe!r}")
    config = OmegaConf.to_container(OmegaConf.merge(base.get("config") or {}, data.get("config") or {}))
    return Recipe(name, f"{name}/{wanted}", info, config)  # type: ignore[arg-type]
