"""``python -m eval_learn`` / ``eval-learn``: the Hydra application.

python -m eval_learn                                        # MiniWorld: ESD erases "red"; asr + ua_ira
python -m eval_learn model=tiny technique=esd metric=asr    # metric=X: the single runner on X
python -m eval_learn technique=esd/esd_sd                   # another of the technique's recipes (its release's)
python -m eval_learn -m technique=free_run,esd metric=asr   # a sweep, one folder per job
python -m eval_learn technique=esd 'metrics=[asr,ua_ira]'   # one technique, several metrics
python -m eval_learn path/to/run.yaml|run.json [overrides]  # a seed-format or saved (.hydra) config
eval-learn summarize DIR                                    # the leaderboard of every run under DIR
eval-learn list [KIND]                                      # every technique, metric, judge, prompt set, model, protocol

Every mistake in the input ends with one message on stderr and exit code 2, before any model loads: every job of a
sweep is composed and validated first. A run that cannot produce a trustworthy number stops with a message and exit
code 1. ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers is imported: no torchvision notices
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # no accelerate notice

import copy  # noqa: E402
import importlib.util  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from eval_learn import protocols  # noqa: E402
from eval_learn.catalog import KINDS, catalog, config_options, render  # noqa: E402
from eval_learn.compose import register_schema, searchpath_overrides  # noqa: E402
from eval_learn.configs import did_you_mean  # noqa: E402
from eval_learn.errors import ConfigError, EvalLearnError  # noqa: E402
from eval_learn.models import CONF_DIR  # noqa: E402
from eval_learn.report import callback as leaderboard_callback  # noqa: E402
from eval_learn.settings import RunConfigSchema  # noqa: E402
from eval_learn.storage import atomic_write  # noqa: E402

log = logging.getLogger("eval_learn")
GROUPS = ("technique", "metric", "model")
SELECTIONS = (*GROUPS, "metrics", "preset")  # overrides that choose configs rather than set a value
# A config of the user's (name/path), or extra config folders: our own config is then not the whole story.
CONFIG_MODE_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")
RUN_FILE_KEYS = {f for f in RunConfigSchema.__dataclass_fields__}
LAUNCHER = "hydra/launcher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher"
LAUNCHER_HINT = (
    " (joblib and slurm need hydra-joblib-launcher and hydra-submitit-launcher: pip install 'eval-learn[cluster]')"
)
SUBCOMMANDS = ("summarize", "list", "merge")
MAX_SWEEP_JOBS = 10_000  # every job of a sweep is checked before the first starts; more is refused (split it)
_FAILURES: list[EvalLearnError] = []  # errors of jobs in this process (a sweep runs its jobs one after another)

register_schema()
OmegaConf.register_new_resolver("unique_run", lambda: os.urandom(3).hex(), use_cache=True, replace=True)


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "0") == "1"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    # Model code is imported here, when a job runs: --help, --cfg, list, summarize and config errors never pay for it.
    from eval_learn.app import build_runner
    from eval_learn.runtime import quiet_libraries

    quiet_libraries()
    try:
        runner = build_runner(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        _record_device_and_dtype(runner.context.device, runner.context.dtype)
        report = runner.run()
    except EvalLearnError as err:
        if _full_error():
            raise
        print(f"eval-learn: error: {err}", file=sys.stderr)  # where config errors go too, not Hydra's stdout log
        _FAILURES.append(err)
        _tidy_hydra_folder(None)
        return None
    _tidy_hydra_folder(runner.output_dir / report["run_id"])
    result = report.get("metric_result")
    return result["value"] if result else None


def _tidy_hydra_folder(run_folder: Path | None) -> None:
    """Leave no folder holding only Hydra's saved config and log: when the run's results went elsewhere (its own
    ``output_dir``), those move into the run's folder beside its report; after a failure with no results, they go."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.RUN:
        return  # a sweep's job folders belong to the sweep
    folder = Path(hydra_cfg.runtime.output_dir).resolve()
    if run_folder is not None and folder in run_folder.resolve().parents or not folder.is_dir():
        return
    hydra_files = {hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log"}
    if not {p.name for p in folder.iterdir()} <= hydra_files:
        return
    if run_folder is not None and run_folder.is_dir():
        for name in hydra_files:
            if name and (folder / name).exists() and not (run_folder / name).exists():
                shutil.move(folder / name, run_folder / name)
    shutil.rmtree(folder, ignore_errors=True)
    for parent in (folder.parent, folder.parent.parent):  # outputs/<date>/ and outputs/, when nothing else is there
        if parent != Path.cwd().resolve() and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def _record_device_and_dtype(device: str, dtype: Any) -> None:
    """Write the device and dtype actually used into the saved ``.hydra/config.yaml`` (in place of ``auto``), so that
    rerunning it elsewhere reproduces the precision, or says that it cannot (``device: cuda`` on a machine without)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    if not hydra_cfg.output_subdir:
        return
    path = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir / "config.yaml"
    if not path.is_file():
        return
    saved = OmegaConf.load(path)
    saved.device = device
    saved.dtype = str(dtype).removeprefix("torch.")
    atomic_write(path, OmegaConf.to_yaml(saved).encode())


def _run_file_argv(argv: list[str]) -> tuple[list[str], Path | None]:
    """``eval-learn FILE [overrides]`` → Hydra arguments that make FILE the primary config, and the temporary
    folder holding it (removed after the run).

    The file may be JSON or YAML, in the seed page's format or a finished run's ``.hydra/config.yaml``. It may set the
    run's own keys only: Hydra's settings (which can instantiate arbitrary code, e.g. ``hydra.callbacks``) belong on
    the command line. Plain overrides of keys the file leaves out work (they are passed as ``++key=value``).
    """
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        return argv, None
    path = Path(argv[0])
    if path.suffix not in {".yaml", ".yml", ".json"}:
        return argv, None
    if path.is_dir():
        raise ConfigError(f"run file '{path}' is a folder; give a .yaml or .json file")
    if not path.is_file():
        raise ConfigError(f"run file '{path}' does not exist")
    try:
        data = OmegaConf.load(path)
    except UnicodeDecodeError:
        raise ConfigError(f"run file '{path}' is not UTF-8 text") from None
    except Exception as err:  # noqa: BLE001 - YAML/JSON syntax errors of every kind
        raise ConfigError(f"run file '{path}' cannot be read: {err}") from None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"run file '{path}' must hold a mapping (technique, metric, ...), not a list")
    for key in data:
        if key in ("hydra", "defaults"):
            raise ConfigError(
                f"run file '{path}' sets '{key}': a run file may set the run's own keys only "
                f"({', '.join(sorted(RUN_FILE_KEYS))}); Hydra's settings go on the command line (e.g. hydra.run.dir=...)"
            )
        if key not in RUN_FILE_KEYS:
            raise ConfigError(f"run file '{path}': unknown key '{key}'.{did_you_mean(str(key), RUN_FILE_KEYS)} "
                              f"Keys: {', '.join(sorted(RUN_FILE_KEYS))}")  # fmt: skip
    ours = OmegaConf.load(CONF_DIR / "config.yaml")
    data["hydra"] = ours.hydra  # our run and sweep folders (unique per run), as for any other run
    folder = Path(tempfile.mkdtemp(prefix="eval_learn_config_"))
    OmegaConf.save(data, folder / "run.yaml")
    overrides = [a if a.startswith(("-", "+", "~", "hydra")) or "=" not in a else f"++{a}" for a in argv[1:]]
    return ["--config-path", str(folder), "--config-name", "run", f"hydra.searchpath=[file://{CONF_DIR}]",
            *overrides], folder  # fmt: skip


def _parse_overrides(argv: list[str]) -> list[Any]:
    """The command line's overrides as Hydra reads them (sweeps, ``+``/``~``, packages). One Hydra cannot read is
    refused here in one line (Hydra's own lexer error spans five); a value with characters outside Hydra's unquoted
    grammar (spaces, non-ASCII letters, brackets) needs quotes, which the message shows."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in _override_texts(argv):
        try:
            parsed += parser.parse_overrides([text])
        except HydraException as err:
            raise ConfigError(_unreadable_override(text, str(err))) from None
    return parsed


def _unreadable_override(text: str, hydra_message: str) -> str:
    """One line for an override Hydra's grammar refuses, naming the character where Hydra's lexer stopped."""
    lines = hydra_message.splitlines()
    key, _, value = text.partition("=")
    reason, hint = (lines[0].strip() if lines else "not in Hydra's override grammar"), ""
    if lines and lines[0].startswith("LexerNoViableAltException") and len(lines) > 1 and "^" in lines[1]:
        at = lines[1].index("^") - (len(lines[0]) - len(text))  # the caret under the text at the end of line 0
        if 0 <= at < len(text):
            reason = f"Hydra's grammar does not allow {text[at]!r} in an unquoted value"
        if value and "'" not in value and '"' not in value:
            hint = f" Quote the value: {key}='\"{value}\"'"
    return f"cannot read the override {text!r}: {reason}.{hint}"


def _override_texts(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in CONFIG_MODE_FLAGS:
            skip = True
            continue
        if not arg.startswith("-") and ("=" in arg or arg.startswith("~")):
            out.append(arg)
    return out


def _values(override: Any) -> list[str]:
    """Every value an override takes: several for a sweep (``a,b``, ``range(...)``), else one."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def _check_group_choices(argv: list[str], overrides: list[Any]) -> None:
    """Refuse an unknown option of a config group with a suggestion, before Hydra composes anything. The options
    are those on Hydra's search path: ours, a plugin package's (search-path plugin) and ``hydra.searchpath``'s."""
    for override in overrides:
        group = override.key_or_group
        if group not in (*GROUPS, LAUNCHER) or override.is_delete():
            continue
        options = config_options(group, _override_texts(argv))
        for choice in _values(override):
            if group == "technique" and "/" in choice and choice.partition("/")[0] in options:
                _check_recipe(choice, _override_texts(argv))
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
    searchpath = searchpath_overrides(_override_texts(argv))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for combination in itertools.product(*selections):
            try:
                tree = OmegaConf.to_container(compose("config", overrides=[*searchpath, *combination]), resolve=False)
            except (HydraException, OmegaConfBaseException, ValueError):
                return  # a composition error: reported when the jobs are validated
            for key in keys:
                _require_key(tree, key)


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


def _sweep_jobs(overrides: list[Any]) -> list[list[str]]:
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


class _JobComposer:
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


def _validate_jobs(argv: list[str], overrides: list[Any], run_file: Path | None) -> None:
    """Compose every job of the command line (all combinations of a sweep) and build its runner, which checks
    everything but loads no model: a mistake in any job stops the command before the first one starts. Jobs are
    composed once per choice of configs and varied (see :class:`_JobComposer`); identical jobs are checked once."""
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from eval_learn.app import build_runner
    from eval_learn.storage import canonical_json

    if run_file is None and any(arg.startswith(CONFIG_MODE_FLAGS) for arg in argv):
        return  # the user's own config: validated when it runs
    jobs = _sweep_jobs(overrides)
    jobs = [[o for o in job if not o.lstrip("+~").startswith("hydra") or searchpath_overrides([o])] for job in jobs]
    config_dir, name = (str(run_file), "run") if run_file else (str(CONF_DIR), "config")
    groups = {*SELECTIONS, *(p.name for p in Path(config_dir).iterdir() if p.is_dir())}
    checked: set[str] = set()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        composer = _JobComposer(name, groups)
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


INJECTED = " metrics=[]"  # what single_metric_overrides adds
JOB_LINE_LOGGERS = ("hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_joblib_launcher._core")


class _HideInjected(logging.Filter):
    """A sweep lists each job's overrides: the ``metrics=[]`` that ``metric=X`` implies is not one the user typed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("\t#"):
            record.msg = record.msg.replace(INJECTED, "")
        return True


def single_metric_overrides(argv: list[str]) -> list[str]:
    """``metric=X`` runs the single runner on X: it replaces the default metric set (``metrics``)."""
    keys = [a.partition("=")[0].lstrip("+~") if not a.startswith("-") else None for a in argv]
    if "metric" in keys and "metrics" not in keys:
        at = keys.index("metric") + 1  # beside it: after a trailing flag (--cfg hydra) Hydra takes no more overrides
        return [*argv[:at], "metrics=[]", *argv[at:]]
    return argv


def subcommand(name: str, args: list[str]) -> int:
    """``summarize DIR``, ``list [KIND]`` and ``merge DIR...``: the leaderboard of the runs under DIR, what can be run,
    and the value of a split run from its shard jobs."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"eval-learn {name}")
    if name == "summarize":
        parser.description = "Gather every report under DIR into DIR/leaderboard.{csv,md}, figures and report.html."
        parser.add_argument("dir", type=Path, help="a run or sweep folder (searched recursively)")
        parser.add_argument("--no-figures", action="store_true", help="tables only")
        parser.add_argument("--grid-images", type=int, default=8, help="images per metric in each run's grid")
    elif name == "merge":
        parser.description = "Combine the shard jobs of split runs (shard.count > 1) under DIR... into their value."
        parser.add_argument("dirs", type=Path, nargs="+", help="folders holding the shard jobs (searched recursively)")
        parser.add_argument("--out", type=Path, default=None, help="where merged reports go (default: DIR/merged)")
    else:
        parser.description = "Every technique, metric, judge, prompt set, model config and protocol, with fields."
        parser.add_argument("kind", nargs="?", choices=[*KINDS, "models", "protocols"], help="one kind only")
        parser.add_argument("--searchpath", default=None, help="more config folders, as hydra.searchpath=[...] takes")
    try:
        options = parser.parse_args([a.replace("hydra.searchpath=", "--searchpath=", 1) for a in args])
    except SystemExit as exit_:  # a usage error: argparse has said what is wrong
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.WARNING, format="eval-learn: %(message)s")
    try:
        if name == "list":
            data = catalog([f"hydra.searchpath={options.searchpath}"] if options.searchpath else [])
            print(render({k: v for k, v in data.items() if options.kind in (None, k)}), end="")
            return 0
        if name == "merge":
            from eval_learn.shards import merge

            out = options.out or options.dirs[0] / "merged"
            for report in merge(options.dirs, out):
                result = report["metric_result"]
                print(f"{result['name']} = {result['value']} (merged {len(report['merged_from'])} shards) → "
                      f"{out / report['run_id'] / 'report.json'}")  # fmt: skip
            return 0
        from eval_learn.report import summarize

        summary = summarize(options.dir, figures=not options.no_figures, grid_images=options.grid_images)
    except EvalLearnError as err:  # a bad folder (2), a full disk (1)
        print(f"eval-learn: error: {err}", file=sys.stderr)
        return err.exit_code
    print(summary.board.markdown(), end="")
    print(f"\nWritten: {', '.join(summary.board.where(p) for p in summary.written)} (in {options.dir})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return subcommand(argv[0], argv[1:])
    run_file: Path | None = None
    try:
        argv, run_file = _run_file_argv(argv)
        if run_file is None and not any(arg.startswith(CONFIG_MODE_FLAGS[:4]) for arg in argv):
            argv = single_metric_overrides(argv)
            for name in JOB_LINE_LOGGERS:
                logging.getLogger(name).addFilter(_HideInjected())
        overrides = _parse_overrides(argv)
        protocols.COMMAND_LINE[:] = protocols.folders(_override_texts(argv))  # protocol/ folders given on it
        if overrides is not None and not any(a in ("--help", "-h", "--hydra-help", "--info") for a in argv):
            _check_group_choices(argv, overrides)
            _check_override_keys(argv, overrides)
            if not any(a.startswith("--cfg") or a == "-c" for a in argv):
                _validate_jobs(argv, overrides, run_file)
    except (ConfigError, ValueError) as err:
        if run_file is not None:
            shutil.rmtree(run_file, ignore_errors=True)
        if _full_error():
            raise
        print(f"eval-learn: error: {err}", file=sys.stderr)
        return 2
    leaderboard_callback.UNFINISHED.clear()
    sys.argv = [sys.argv[0], *argv]
    try:
        hydra_main()
    finally:
        if run_file is not None:
            shutil.rmtree(run_file, ignore_errors=True)
    # Jobs that a launcher ran in other processes (joblib, submitit) fail there: the leaderboard callback saw them.
    codes = [err.exit_code for err in _FAILURES] + ([1] if leaderboard_callback.UNFINISHED else [])
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
