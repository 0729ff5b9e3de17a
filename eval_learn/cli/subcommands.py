"""``eval-learn summarize | list | merge``: the argparse subcommands beside the Hydra app."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from eval_learn.catalog import KINDS, catalog, render
from eval_learn.errors import EvalLearnError

SUBCOMMANDS = ("summarize", "list", "merge")


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
