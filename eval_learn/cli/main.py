"""Which of its jobs a command line is: a subcommand (``list``, ``summarize``, ``merge``), ``--help``, or the Hydra
app, whose every job is checked first (eval_learn.cli.precheck). Each imports only what it needs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HELP_FLAGS = ("--help", "-h", "--hydra-help", "--info")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("summarize", "list", "merge"):
        from eval_learn.cli.subcommands import subcommand

        return subcommand(argv[0], argv[1:])
    from eval_learn import protocols
    from eval_learn.cli.arguments import (
        CONFIG_MODE_FLAGS,
        full_error,
        override_texts,
        parse_overrides,
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
