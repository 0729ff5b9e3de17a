"""The command line's arguments as Hydra reads them: overrides, a run file given in place of them, and what
``metric=X`` implies."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from eval_learn.configs import did_you_mean
from eval_learn.errors import ConfigError
from eval_learn.models import CONF_DIR
from eval_learn.settings import RunConfigSchema
from eval_learn.technique_fields import RENAMED_FIELDS

log = logging.getLogger(__name__)

GROUPS = ("technique", "metric", "model")
SELECTIONS = (*GROUPS, "metrics", "preset")  # overrides that choose configs rather than set a value
# A config of the user's (name/path), or extra config folders: our own config is then not the whole story.
CONFIG_MODE_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")
RUN_FILE_KEYS = {f for f in RunConfigSchema.__dataclass_fields__}


def run_file_argv(argv: list[str]) -> tuple[list[str], Path | None]:
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


def parse_overrides(argv: list[str]) -> list[Any]:
    """The command line's overrides as Hydra reads them (sweeps, ``+``/``~``, packages). One Hydra cannot read is
    refused here in one line (Hydra's own lexer error spans five); a value with characters outside Hydra's unquoted
    grammar (spaces, non-ASCII letters, brackets) needs quotes, which the message shows."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in override_texts(argv):
        try:
            parsed += parser.parse_overrides([text])
        except HydraException as err:
            raise ConfigError(unreadable_override(text, str(err))) from None
    return parsed


def unreadable_override(text: str, hydra_message: str) -> str:
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


def override_texts(argv: list[str]) -> list[str]:
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


def override_values(override: Any) -> list[str]:
    """Every value an override takes: several for a sweep (``a,b``, ``range(...)``), else one."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def single_metric_overrides(argv: list[str]) -> list[str]:
    """``metric=X`` runs the single runner on X: it replaces the default metric set (``metrics``)."""
    keys = [a.partition("=")[0].lstrip("+~") if not a.startswith("-") else None for a in argv]
    if "metric" in keys and "metrics" not in keys:
        at = keys.index("metric") + 1  # beside it: after a trailing flag (--cfg hydra) Hydra takes no more overrides
        return [*argv[:at], "metrics=[]", *argv[at:]]
    return argv


def renamed_technique_keys(argv: list[str]) -> list[str]:
    """``technique.config.<old>=V`` (a renamed field, :data:`RENAMED_FIELDS`) → ``technique.config.<new>=V``, with one
    deprecation line, as the Python API takes the old key. Hydra's struct config has only the new key, so the old one
    is renamed before Hydra or the pre-check sees it (``+technique.config.<old>=V`` adds a key and reaches the
    technique's config as it is, where the API's own deprecation applies)."""
    out = []
    for arg in argv:
        prefix = "++" if arg.startswith("++") else ""
        key, eq, value = arg.removeprefix(prefix).partition("=")
        section, _, old = key.rpartition(".")
        if eq and not arg.startswith("-") and section == "technique.config" and old in RENAMED_FIELDS:
            new = RENAMED_FIELDS[old]
            log.warning("%s is deprecated, use technique.config.%s (the value given is used)", key, new)
            arg = f"{prefix}{section}.{new}={value}"
        out.append(arg)
    return out


def full_error() -> bool:
    """``HYDRA_FULL_ERROR=1``: a traceback in place of the one-line message."""
    return os.environ.get("HYDRA_FULL_ERROR", "0") == "1"
