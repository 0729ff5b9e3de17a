"""``python -m eval_learn`` / ``eval-learn``: the Hydra application.

python -m eval_learn                                        # MiniWorld: ESD erases "red"; asr + ua_ira
python -m eval_learn model=tiny technique=esd metric=asr    # metric=X: the single runner on X
python -m eval_learn -m technique=free_run,esd metric=asr   # a sweep, one folder per job
python -m eval_learn technique=esd 'metrics=[asr,ua_ira]'   # one technique, several metrics
python -m eval_learn path/to/run.yaml|run.json [overrides]  # a seed-format or saved (.hydra) config
"""

from __future__ import annotations

import itertools
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from eval_learn.app import build_runner
from eval_learn.configs import did_you_mean
from eval_learn.models import CONF_DIR

log = logging.getLogger("eval_learn")
GROUPS = ("technique", "metric", "model")
SELECTIONS = (*GROUPS, "metrics", "preset")  # overrides that choose configs rather than set a value
# A config of the user's (name/path), or extra config folders: our own config is then not the whole story.
CONFIG_MODE_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    data = OmegaConf.to_container(cfg, resolve=True)
    runner = build_runner(data)  # type: ignore[arg-type]
    report = runner.run()
    result = report.get("metric_result")
    return result["value"] if result else None


def _config_file_argv(argv: list[str]) -> list[str]:
    """``eval-learn FILE [overrides]`` → Hydra arguments that make FILE the primary config.

    The file may be JSON or YAML, in the seed page's format or a finished run's ``.hydra/config.yaml``; it is copied
    as YAML into a temporary folder, and the package's config groups stay on the search path for overrides.
    """
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        return argv
    path = Path(argv[0])
    if path.suffix not in {".yaml", ".yml", ".json"}:
        return argv
    if not path.is_file():
        raise SystemExit(f"eval-learn: config file '{path}' does not exist")
    data = OmegaConf.load(path)
    folder = Path(tempfile.mkdtemp(prefix="eval_learn_config_"))
    OmegaConf.save(data, folder / "run.yaml")
    return ["--config-path", str(folder), "--config-name", "run", f"hydra.searchpath=[file://{CONF_DIR}]", *argv[1:]]


def _parse_overrides(argv: list[str]) -> list[Any] | None:
    """The command line's overrides as Hydra reads them (sweeps, ``+``/``~``, packages); None when Hydra will refuse
    them itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    texts = [a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~"))]
    try:
        return OverridesParser.create().parse_overrides(texts)
    except HydraException:
        return None


def _values(override: Any) -> list[str]:
    """Every value an override takes: several for a sweep (``a,b``, ``range(...)``), else one."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def _check_group_choices(overrides: list[Any]) -> None:
    """Refuse an unknown option of a config group with a suggestion, before Hydra composes anything."""
    for override in overrides:
        group = override.key_or_group
        if group not in GROUPS or override.is_delete():
            continue
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        for choice in _values(override):
            if choice not in options and choice != "null" and not choice.startswith("$"):
                raise SystemExit(
                    f"eval-learn: unknown {group} '{choice}'.{did_you_mean(choice, options)} Available: {', '.join(options)}"
                )


def _check_override_keys(argv: list[str], overrides: list[Any]) -> None:
    """Refuse an override of a key the composed config lacks (a typo), naming the closest key, before any run.

    Hydra's own message says only "not in struct". The config is composed without running (about 0.1 s) for every
    combination of the config-group choices in ``argv``, since a sweep's jobs differ in their keys. Whatever Hydra
    itself will report more precisely (composition errors, a user's own config file via ``-cn``/``-cp``, Hydra's
    settings) is left to Hydra.
    """
    if any(arg.startswith(CONFIG_MODE_FLAGS) for arg in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    selections: list[list[str]] = []  # per selection override: its alternatives (several in a sweep)
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
            selections.append([f"{prefix}{key}{package}={value}" for value in _values(override)])
        elif override.type == OverrideType.CHANGE and override.package is None:
            keys.append(key)
    if not keys:
        return
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for combination in itertools.product(*selections):
            try:
                tree = OmegaConf.to_container(compose("config", overrides=list(combination)), resolve=False)
            except (HydraException, OmegaConfBaseException, ValueError):
                return  # a composition error: Hydra reports it when it composes the run
            for key in keys:
                _require_key(tree, key)


def _require_key(tree: Any, key: str) -> None:
    node, path = tree, []
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            options = list(node) if isinstance(node, dict) else []
            where = ".".join(path) or "the run config"
            raise SystemExit(
                f"eval-learn: unknown key '{key}': {where} has no '{part}'.{did_you_mean(part, options)}"
                f" Keys there: {', '.join(map(str, options))}."
            )
        node, path = node[part], [*path, part]


def single_metric_overrides(argv: list[str]) -> list[str]:
    """``metric=X`` runs the single runner on X: it replaces the default metric set (``metrics``)."""
    keys = [a.partition("=")[0].lstrip("+~") for a in argv if not a.startswith("-")]
    if "metric" in keys and "metrics" not in keys:
        return [*argv, "metrics=[]"]
    return argv


def main() -> None:
    argv = _config_file_argv(sys.argv[1:])
    if not any(arg.startswith(CONFIG_MODE_FLAGS[:4]) for arg in argv):  # not a config file of the user's
        argv = single_metric_overrides(argv)
    overrides = _parse_overrides(argv)
    if overrides is not None:
        _check_group_choices(overrides)
        _check_override_keys(argv, overrides)
    sys.argv = [sys.argv[0], *argv]
    hydra_main()


if __name__ == "__main__":
    main()
