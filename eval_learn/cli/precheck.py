"""Every job of a command line checked before the first one starts: config-group options, override keys and each
job's runner (which checks everything but loads no model). A mistake is one ConfigError."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from tqdm import tqdm

from eval_learn.catalog import config_options
from eval_learn.cli.arguments import CONFIG_MODE_FLAGS, GROUPS, SELECTIONS, override_texts, override_values
from eval_learn.compose import hydra_session, register_schema, searchpath_overrides
from eval_learn.configs import did_you_mean
from eval_learn.errors import ConfigError
from eval_learn.models import CONF_DIR

LAUNCHER = "hydra/launcher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher"
LAUNCHER_HINT = (
    " (joblib and slurm need hydra-joblib-launcher and hydra-submitit-launcher: pip install 'eval-learn[cluster]')"
)
MAX_SWEEP_JOBS = 10_000  # every job of a sweep is checked before the first starts; more is refused (split it)


def check_group_choices(argv: list[str], overrides: list[Any]) -> None:
    """Refuse an unknown option of a config group with a suggestion, before Hydra composes anything. The options
    are those on Hydra's search path: ours, a plugin package's (search-path plugin) and ``hydra.searchpath``'s."""
    for override in overrides:
        group = override.key_or_group
        if group not in (*GROUPS, LAUNCHER) or override.is_delete():
            continue
        options = config_options(group, override_texts(argv))
        for choice in override_values(override):
            if group == "technique" and "/" in choice and choice.partition("/")[0] in options:
                _check_recipe(choice, override_texts(argv))
                continue
            if choice not in options and choice != "null" and not choice.startswith("$"):
                hint = LAUNCHER_HINT if group == LAUNCHER else ""
                raise ConfigError(f"unknown {group} '{choice}'.{did_you_mean(choice, options)} "
                                  f"Available: {', '.join(options)}{hint}")  # fmt: skip
            if group == LAUNCHER and choice == "slurm" and importlib.util.find_spec(SUBMITIT) is None:
                raise ConfigError("hydra/launcher=slurm needs the Submitit launcher plugin: "
                                  "pip install hydra-submitit-launcher (or 'eval-learn[cluster]')")  # fmt: skip


def _check_recipe(choice: str, texts: list[str]) -> None:
    """``technique=<name>/<recipe>``: the recipe must be one of the technique's (``conf/technique/<name>/``)."""
    name, _, recipe = choice.partition("/")
    recipes = config_options(f"technique/{name}", texts)
    if recipe not in recipes:
        available = [name, *(f"{name}/{r}" for r in recipes)]
        raise ConfigError(f"unknown technique recipe '{choice}'.{did_you_mean(choice, available)} "
                          f"Recipes of {name}: {', '.join(available)}")  # fmt: skip


def check_override_keys(argv: list[str], overrides: list[Any]) -> None:
    """Refuse an override of a key the composed config lacks (a typo), naming the closest key, before any run.

    Hydra's own message says only "not in struct". The config is composed without running (about 0.1 s) for every
    combination of the config-group choices in ``argv``, since a sweep's jobs differ in their keys. Whatever Hydra
    itself will report more precisely (composition errors, a user's own config file via ``-cn``/``-cp``, Hydra's
    settings) is left to Hydra.
    """
    if any(arg.startswith(CONFIG_MODE_FLAGS) for arg in argv):
        return
    selections, keys = _selections_and_keys(overrides)
    if not keys:
        return
    for tree in _compositions(argv, selections):
        if tree is None:
            return  # a composition error: reported when the jobs are validated
        for key in keys:
            _require_key(tree, key)


def _selections_and_keys(overrides: list[Any]) -> tuple[list[list[str]], list[str]]:
    """The overrides that choose configs (per override: its alternatives, several in a sweep) and the keys the
    plain value overrides set."""
    from hydra.core.override_parser.types import OverrideType

    selections: list[list[str]] = []
    keys: list[str] = []
    for override in overrides:
        key = override.key_or_group
        if key.startswith("hydra") or "/" in key:
            continue
        if override.is_delete():
            selections.append([override.input_line])
        elif key in SELECTIONS:
            prefix = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}.get(override.type, "")
            package = f"@{override.package}" if override.package else ""
            selections.append([f"{prefix}{key}{package}={value}" for value in override_values(override)])
        elif override.type == OverrideType.CHANGE and override.package is None:
            keys.append(key)
    return selections, keys


def _compositions(argv: list[str], selections: list[list[str]]) -> Iterator[dict[str, Any] | None]:
    """The composed config (plain, unresolved) for every combination of the config-group choices; None where
    Hydra cannot compose it."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    searchpath = searchpath_overrides(override_texts(argv))
    with hydra_session():
        for combination in itertools.product(*selections):
            try:
                yield OmegaConf.to_container(compose("config", overrides=[*searchpath, *combination]), resolve=False)  # type: ignore[misc]
            except (HydraException, OmegaConfBaseException, ValueError):
                yield None


def _attack_setting(override: Any) -> str | None:
    """For a plain override of one setting of a metric's attack (``metric.config.attack.iterations=3``,
    ``metric.config.robustness.attack.k=3``): the attack's key (``metric.config.attack``); else None."""
    from hydra.core.override_parser.types import OverrideType

    key = override.key_or_group
    parent, _, _ = key.rpartition(".")
    if override.type != OverrideType.CHANGE or override.package is not None or not parent.endswith(".attack"):
        return None
    return parent if key.split(".")[0] in ("metric", "metrics") else None


def attack_setting_overrides(argv: list[str], overrides: list[Any]) -> list[str]:
    """``argv`` with each plain override of an attack's setting made one Hydra accepts.

    An attack is a name or ``{name, <settings>}``, so its settings are not keys of the composed config until they
    are given, and Hydra refuses ``metric.config.attack.iterations=3`` (it wants ``+``). Here that override becomes
    ``++metric.config.attack.iterations=3``; where the attack is a name (``metric.config.attack=unlearndiffatk``, an
    alias's or the config's own ``auto``) it first becomes ``{name: unlearndiffatk}``. The setting itself is checked
    with the attack (each attack's own fields, with a did-you-mean) when the jobs are validated."""
    settings = {o.input_line: attack for o in overrides if (attack := _attack_setting(o)) is not None}
    if not settings or any(arg.startswith(CONFIG_MODE_FLAGS) for arg in argv):
        return argv
    given = {o.key_or_group: o for o in overrides if o.key_or_group in settings.values() and not o.is_delete()}
    tree = next(_compositions(argv, _selections_and_keys(overrides)[0]), None)
    if tree is None:
        return argv  # a composition error: reported when the jobs are validated
    out: list[str] = []
    named: set[str] = set()  # attacks already turned into {name: ...}
    held: dict[str, list[str]] = {}  # settings given before their attack's own override: they go after it
    for arg in argv:
        key = arg.partition("=")[0].lstrip("+~")
        if key in given and arg == given[key].input_line:
            value = given[key].value()
            out.append(f"{key}={{name: {value}}}" if isinstance(value, str) else arg)
            if isinstance(value, (str, dict)):
                named.add(key)
            out += held.pop(key, [])
            continue
        attack = settings.get(arg)
        if attack is None:
            out.append(arg)
            continue
        if attack in given and attack not in named:
            held.setdefault(attack, []).append(f"++{arg}")
            continue
        node: Any = tree
        for part in attack.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and attack not in named:
            raise ConfigError(f"'{arg}': {attack} is null (no attack); name one first, e.g. {attack}=unlearndiffatk "
                              f"{arg} (eval-learn list attacks)")  # fmt: skip
        if isinstance(node, str) and attack not in named:
            out.append(f"{attack}={{name: {node}}}")
            named.add(attack)
        out.append(f"++{arg}")
    return out


def _require_key(tree: Any, key: str) -> None:
    node, path = tree, []
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            options = list(node) if isinstance(node, dict) else []
            where = ".".join(path) or "the run config"
            hint = ""
            if not isinstance(node, dict) and path:
                hint = (f" '{'.'.join(path)}' is {node!r}, not a mapping: set it whole, e.g. "
                        f"'{'.'.join(path)}={{name: ..., {part}: ...}}'.")  # fmt: skip
            raise ConfigError(
                f"unknown key '{key}': {where} has no '{part}'.{did_you_mean(part, options)}{hint}"
                + (f" Keys there: {', '.join(map(str, options))}." if options else "")
            )
        node, path = node[part], [*path, part]


def sweep_jobs(overrides: list[Any]) -> list[list[str]]:
    """Every job of the command line as its override strings, as Hydra's basic sweeper runs them (the product of
    the swept values, in order; the last override of a key wins). Refused above :data:`MAX_SWEEP_JOBS`."""
    alternatives: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ConfigError(f"'{override.input_line}': the basic sweeper sweeps lists and ranges only")
            alternatives[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            alternatives[key] = [f"{key}={override.get_value_element_as_str()}"]
    count = math.prod(len(values) for values in alternatives.values())
    if count > MAX_SWEEP_JOBS:
        raise ConfigError(f"the sweep has {count:,} jobs, more than the {MAX_SWEEP_JOBS:,} that are checked before a "
                          "sweep starts; split it into several sweeps (e.g. one per technique)")  # fmt: skip
    return [list(job) for job in itertools.product(*alternatives.values())]


class JobComposer:
    """Compose many jobs of one sweep fast: Hydra composes once per distinct choice of configs (groups, ``+``/``~``,
    packages, Hydra's settings); a job's plain value overrides (``key=value``) are then set on a copy of that
    composition. Only a value of the type already there is set this way (Hydra would convert others): anything else
    goes through Hydra. The first job of each choice is also composed by Hydra in full and must match, else every
    job of that choice is composed by Hydra."""

    def __init__(self, name: str, groups: set[str]) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.name, self.groups = name, groups
        self.parser = OverridesParser.create()
        self.parsed: dict[str, Any] = {}
        self.bases: dict[tuple[str, ...], dict[str, Any] | None] = {}  # None: this choice is composed by Hydra

    def _is_value(self, text: str) -> bool:
        from hydra.core.override_parser.types import OverrideType

        if text not in self.parsed:
            self.parsed[text] = self.parser.parse_override(text)
        override = self.parsed[text]
        key = override.key_or_group
        return (override.type == OverrideType.CHANGE and override.package is None and "/" not in key
                and not key.startswith("hydra") and key.split(".")[0] not in self.groups)  # fmt: skip

    def _hydra(self, overrides: list[str]) -> dict[str, Any]:
        from hydra import compose

        return OmegaConf.to_container(compose(self.name, overrides=overrides), resolve=False)  # type: ignore[return-value]

    def compose(self, job: list[str]) -> dict[str, Any]:
        """The job's config as a plain, unresolved mapping."""
        choice = tuple(o for o in job if not self._is_value(o))
        values = [o for o in job if self._is_value(o)]
        if choice not in self.bases:
            base = self._hydra(list(choice))
            full = self._hydra(job)
            self.bases[choice] = base if self._set(base, values) == full else None
            return full
        base = self.bases[choice]
        fast = None if base is None else self._set(base, values)
        return fast if fast is not None else self._hydra(job)  # Hydra's own error, if any

    def _set(self, base: dict[str, Any], values: list[str]) -> dict[str, Any] | None:
        cfg = copy.deepcopy(base)
        for text in values:
            override = self.parsed[text]
            *parents, leaf = override.key_or_group.split(".")
            node: Any = cfg
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            value = override.value()
            if not isinstance(node, dict) or leaf not in node or type(node[leaf]) is not type(value):
                return None
            if isinstance(value, (dict, list)) or isinstance(value, str) and "${" in value:
                return None  # merged, or an interpolation: Hydra's way
            node[leaf] = value
        return cfg


def validate_jobs(argv: list[str], overrides: list[Any], run_file: Path | None) -> None:
    """Compose every job of the command line (all combinations of a sweep) and build its runner, which checks
    everything but loads no model: a mistake in any job stops the command before the first one starts. Jobs are
    composed once per choice of configs and varied (see :class:`JobComposer`); identical jobs are checked once."""
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from eval_learn.app import build_runner
    from eval_learn.storage import canonical_json

    if run_file is None and any(arg.startswith(CONFIG_MODE_FLAGS) for arg in argv):
        return  # the user's own config: validated when it runs
    jobs = sweep_jobs(overrides)
    jobs = [[o for o in job if not o.lstrip("+~").startswith("hydra") or searchpath_overrides([o])] for job in jobs]
    config_dir, name = (str(run_file), "run") if run_file else (str(CONF_DIR), "config")
    groups = {*SELECTIONS, *(p.name for p in Path(config_dir).iterdir() if p.is_dir())}
    checked: set[str] = set()
    register_schema()  # what conf/config.yaml (and a run file, through it) starts from
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        composer = JobComposer(name, groups)
        for job in tqdm(jobs, desc="Checking the sweep's jobs", unit="job", disable=len(jobs) < 200, leave=False):
            try:
                data = composer.compose(job)
            except (HydraException, OmegaConfBaseException) as err:
                raise ConfigError(str(err).strip().split("\n")[0]) from None
            if isinstance(data.get("output_dir"), str) and "${" in data["output_dir"]:
                data["output_dir"] = "outputs"
            key = canonical_json(data)
            if "${" in key:  # interpolations left: resolved as the run resolves them
                data = OmegaConf.to_container(OmegaConf.create(data), resolve=True)  # type: ignore[assignment]
                key = canonical_json(data)
            if key in checked:
                continue
            prefix = f"job {' '.join(job)}: " if len(jobs) > 1 else ""
            try:
                build_runner(data)  # type: ignore[arg-type]
            except ConfigError as err:
                raise ConfigError(f"{prefix}{err}") from None
            checked.add(key)
