"""Which of its jobs a command line is: a subcommand (``list``, ``summarize``, ``merge``), ``--help``, or the Hydra
app, whose every job is checked first (eval_learn.cli.precheck). Each imports only what it needs."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

HELP_FLAGS = ("--help", "-h", "--hydra-help", "--info")


class OnceFilter(logging.Filter):
    """Let each distinct warning through once (a command line's pre-check and its job both build the runner)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno < logging.WARNING:
            return True
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def main(argv: list[str] | None = None) -> int:
    once = OnceFilter()  # the pre-check builds each job's runner, then the job does: a deprecation is said once
    logging.getLogger("eval_learn.configs").addFilter(once)
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        logging.getLogger("eval_learn.configs").removeFilter(once)


def _main(argv: list[str]) -> int:
    if argv and argv[0] in ("summarize", "list", "merge"):
        from eval_learn.cli.subcommands import subcommand

        return subcommand(argv[0], argv[1:])
    from eval_learn import protocols
    from eval_learn.cli.arguments import (
        CONFIG_MODE_FLAGS,
        full_error,
        override_texts,
        parse_overrides,
        renamed_technique_keys,
        run_file_argv,
        single_metric_overrides,
    )
    from eval_learn.cli.precheck import (
        attack_setting_overrides,
        check_group_choices,
        check_override_keys,
        validate_jobs,
    )
    from eval_learn.errors import ConfigError

    run_file: Path | None = None
    try:
        argv, run_file = run_file_argv(argv)
        argv = renamed_technique_keys(argv)
        plain = run_file is None and not any(arg.startswith(CONFIG_MODE_FLAGS[:4]) for arg in argv)
        if plain:
            argv = single_metric_overrides(argv)
        overrides = parse_overrides(argv)
        protocols.COMMAND_LINE[:] = protocols.folders(override_texts(argv))  # protocol/ folders given on it
        if not any(a in HELP_FLAGS for a in argv):
            check_group_choices(argv, overrides)
            argv = attack_setting_overrides(argv, overrides)  # metric.config.attack.<setting>=V: Hydra's ++ form
            overrides = parse_overrides(argv)
            check_override_keys(argv, overrides)
            if not any(a.startswith("--cfg") or a == "-c" for a in argv):
                validate_jobs(argv, overrides, run_file)
        elif plain and any(a in ("--help", "-h") for a in argv) and "--resolve" not in argv:
            from eval_learn.cli.app_help import app_help

            print(app_help(override_texts(argv)))
            return 0
    except (ConfigError, ValueError) as err:
        if run_file is not None:
            shutil.rmtree(run_file, ignore_errors=True)
        if full_error():
            raise
        print(f"eval-learn: error: {err}", file=sys.stderr)
        return 2
    from eval_learn.cli.hydra_app import run

    try:
        return run(argv, hide_injected=plain)
    finally:
        if run_file is not None:
            shutil.rmtree(run_file, ignore_errors=True)
