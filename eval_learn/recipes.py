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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from eval_learn.compose import options, technique_config
from eval_learn.configs import ConfigError, from_mapping, require

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


def recipe_options(name: str, overrides: Sequence[str] = ()) -> list[str]:
    """The recipes a technique ships beside its default (``technique/<name>/*.yaml`` on the config search path)."""
    return options(f"technique/{name}", overrides)


def find_recipe(option: str, overrides: Sequence[str] = ()) -> Recipe | None:
    """The recipe ``option`` selects (``name`` = the default recipe, ``name/recipe`` = another; the default's own
    recipe name also selects it), composed as the command line composes it (eval_learn.compose), without a model's
    preset; None when the technique has no YAML on the search path. An unknown recipe is a ConfigError with the
    nearest name."""
    return recipe_of(option, technique_config(option, None, overrides), overrides)


def recipe_of(option: str, node: dict[str, Any] | None, overrides: Sequence[str] = ()) -> Recipe | None:
    """The recipe of a composed technique node (eval_learn.compose.technique_config), its provenance checked."""
    if node is None:
        return None
    name, wanted = split_option(option)
    info = read_info(node, f"technique '{option}'")
    if wanted is not None and info.recipe != wanted:
        raise ConfigError(f"technique '{option}': its 'recipe' must be its file name '{wanted}', got {info.recipe!r}")
    selected = f"{name}/{wanted}" if wanted is not None and wanted in recipe_options(name, overrides) else name
    return Recipe(name, selected, info, dict(node.get("config") or {}))
