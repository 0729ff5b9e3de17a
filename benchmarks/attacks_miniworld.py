"""The MiniWorld attack grid: every technique's MiniWorld preset erases red, every registered attack and probe attacks it.

    python benchmarks/attacks_miniworld.py --cache ~/.cache/eval_learn_attack_grid        # the whole grid
    python benchmarks/attacks_miniworld.py --cache DIR --rows uce ca --columns unlearndiffatk "p4d N"

A script, not part of the package: it drives the runners. Rows are ``free_run`` (the reference) and every technique
with a ``conf/preset/miniworld_<technique>.yaml``; columns are every registered attack (``eval-learn list attacks``),
P4D twice (its N and K variants). Each cell is one ``asr`` run through :class:`SingleBenchmarkRunner` on the first
``--limit`` red prompts of the MiniWorld set, one image each, with the column's CPU budget (``COLUMNS``), so the
attack searches the technique's own pipeline and is judged by the MiniWorld CNN, as any ``asr`` run with an attack.

Resumable: weights, images, verdicts and attack outcomes are cached under ``--cache`` by the runners (a killed cell
resumes per prompt), and every finished cell is written to ``--cache/cells/`` with its budget, so a rerun skips it.
The grid runs column by column (UnlearnDiffAtk first), so the column the leaderboard quotes is done first.
Writes the table between the markers of ``docs/attacks_miniworld.md`` after every cell and every cell to ``docs/attacks_miniworld.json``
(which ``benchmarks/miniworld_figure.py`` reads for its "ASR after UnlearnDiffAtk" column).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from doc_blocks import replace_block  # benchmarks/, beside this script

from eval_learn.configs import did_you_mean
from eval_learn.registry import ATTACKS, TECHNIQUES
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import quiet_libraries

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "attacks_miniworld.md"

# Per column: the attack and its CPU budget (its settings; time_limit_s is per prompt). The MiniWorld's text context is
# 16 tokens, BOS and EOS included, so learned token counts stay at 14 or fewer (P4D-N's release value, 16, cannot fit).
COLUMNS: dict[str, tuple[str, dict[str, Any]]] = {
    "unlearndiffatk": ("unlearndiffatk", {"timesteps": 3, "iterations": 8, "time_limit_s": 8}),
    "p4d N": ("p4d", {"variant": "n", "prompt_len": 8, "iterations": 30, "eval_step": 10, "time_limit_s": 8}),
    "p4d K": ("p4d", {"variant": "k", "iterations": 30, "eval_step": 10, "time_limit_s": 8}),
    "ring_a_bell": (
        "ring_a_bell",
        {"tokens": 14, "population": 50, "generations": 20, "check_every": 5, "time_limit_s": 6},
    ),  # fmt: skip
    "mma_diffusion": (
        "mma_diffusion",
        {"tokens": 14, "steps": 10, "topk": 64, "batch_size": 32, "check_every": 5, "time_limit_s": 6},
    ),  # fmt: skip
    # The token is learned once per cell (the first prompt's search) and reused for the others.
    "concept_inversion": ("concept_inversion", {"steps": 40, "images": 4, "batch_size": 4, "time_limit_s": 15}),
    "noise_search": (
        "noise_search",
        {"eta_values": [1.0, 1.34, 1.68], "variance_scales": [1.0, 1.04], "time_limit_s": 6},
    ),  # fmt: skip
    "diffusion_completion": ("diffusion_completion", {"time_limit_s": 6}),
    "inpainting_context": ("inpainting_context", {"time_limit_s": 6}),
}
DEFAULT_BUDGET: dict[str, Any] = {"time_limit_s": 6}  # an attack registered after this table was sized


def columns() -> dict[str, tuple[str, dict[str, Any]]]:
    """``COLUMNS``, plus any registered attack it does not name (with ``DEFAULT_BUDGET``)."""
    named = {attack for attack, _ in COLUMNS.values()}
    extra = {name: (name, DEFAULT_BUDGET) for name in ATTACKS.names() if name not in named}
    return {**COLUMNS, **extra}


def rows() -> list[str]:
    """``free_run`` (the reference) and every technique with a MiniWorld preset."""
    preset = ROOT / "conf" / "preset"
    return ["free_run", *(n for n in TECHNIQUES.names() if (preset / f"miniworld_{n}.yaml").exists())]


def request(technique: str, label: str, limit: int) -> dict[str, Any]:
    attack, budget = columns()[label]
    made = {"technique": technique, "column": label, "attack": attack, "budget": budget, "limit": limit}
    version = getattr(ATTACKS.get(attack), "algorithm_version", 1)  # a changed algorithm makes its cells stale
    return made if version == 1 else {**made, "algorithm_version": version}


def cell_path(technique: str, label: str, cache: Path) -> Path:
    return cache / "cells" / technique / f"{label.replace(' ', '_')}.json"


def stored(technique: str, label: str, limit: int, cache: Path) -> dict[str, Any] | None:
    """The cell's result on disk, if it was measured with this budget and prompt count."""
    path = cell_path(technique, label, cache)
    if not path.exists():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    return result if result.get("request") == request(technique, label, limit) else None


def cell(technique: str, label: str, limit: int, cache: Path) -> dict[str, Any]:
    """One ``asr`` run with the column's attack, or its stored result when one with the same budget is on disk."""
    done = stored(technique, label, limit, cache)
    if done is not None:
        return done
    attack, budget = columns()[label]
    path = cell_path(technique, label, cache)
    metric = {"limit": limit, "samples_per_prompt": 1, "attack": {"name": attack, **budget}}
    started = time.perf_counter()
    runner = SingleBenchmarkRunner(technique, "asr", {}, metric, output_dir=cache / "runs", model="miniworld",
                                   cache_dir=cache, batch_size=1)  # fmt: skip
    try:
        block = runner.run()["metric_result"]["details"]["attack"]
    except Exception as err:  # noqa: BLE001 - an attack that cannot run on a technique is a cell, not the grid's end
        log.warning("%s × %s cannot run: %s", technique, label, err)
        result = {
            "request": request(technique, label, limit),
            "error": f"{type(err).__name__}: {str(err).splitlines()[0]}",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1), encoding="utf-8")
        return result
    result = {
        "request": request(technique, label, limit),
        "asr_before": block["asr_before"],
        "asr_before_ci95": block["asr_before_ci95"],
        "asr_after": block["asr_after"],
        "asr_after_ci95": block["asr_after_ci95"],
        "attacked_images": block["attacked_images"],
        "attack_successes": block["attack_successes"],
        "attack_seconds_total": block["attack_seconds_total"],
        "wall_s": round(time.perf_counter() - started, 1),
        "adversarial_prompts": [a.get("prompt") for a in block["per_prompt"] if a.get("success")],
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def table(grid: dict[tuple[str, str], dict[str, Any]], row_names: list[str], labels: list[str], limit: int) -> str:
    def text(c: dict[str, Any] | None) -> str:
        if c is None:
            return "—"
        if "error" in c:
            return "cannot run¹"
        return f"{c['asr_before']:.2f} → **{c['asr_after']:.2f}**<br>{c['attack_seconds_total']:.0f} s"

    budgets = "; ".join(f"`{label}` {columns()[label][1]}" for label in labels)
    lines = [
        f"*Measured {time.strftime('%Y-%m-%d')}: {limit} red prompts, one image each; per cell the ASR before → after "
        "attack and the attack's own seconds (all its searches). Regenerate with `python benchmarks/attacks_miniworld.py "
        f"--cache DIR`. Budgets (time_limit_s is per prompt): {budgets}.*",
        "",
        "| technique | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    lines += [f"| {r} | " + " | ".join(text(grid.get((r, label))) for label in labels) + " |" for r in row_names]
    errors = [f"{t} × {c}: {v['error']}" for (t, c), v in grid.items() if "error" in v]
    if errors:
        lines += ["", "¹ The attack stopped with an error on this technique:", "", *(f"- {e}" for e in errors)]
    return "\n".join(lines)


def write(limit: int, cache: Path) -> None:
    """Every default row × column measured so far (in ``cache``) into the page's table and into
    ``docs/attacks_miniworld.json``; a cell not measured yet shows "—"."""
    row_names, labels = rows(), list(columns())
    grid = {(t, c): v for t in row_names for c in labels if (v := stored(t, c, limit, cache)) is not None}
    replace_block(PAGE, "attack_grid", table(grid, row_names, labels, limit))
    cells = [{"technique": t, "column": c, **v} for (t, c), v in grid.items()]
    (ROOT / "docs" / "attacks_miniworld.json").write_text(json.dumps(cells, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=None, help="techniques (default: free_run and every preset)")
    parser.add_argument("--columns", nargs="+", default=None, help=f"default: {' '.join(repr(c) for c in columns())}")
    parser.add_argument("--limit", type=int, default=3, help="red prompts (one image each)")
    parser.add_argument("--cache", type=Path, required=True, help="weights, images, outcomes, cells: a rerun resumes")
    parser.add_argument("--no-write", action="store_true", help="print the table only; leave docs/ alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    quiet_libraries()
    row_names, labels = args.rows or rows(), args.columns or list(columns())
    for name, known in [*((r, rows()) for r in row_names), *((c, list(columns())) for c in labels)]:
        if name not in known:  # an unknown name fails before anything runs
            parser.error(f"unknown '{name}'.{did_you_mean(name, known)} Known: {', '.join(known)}")
    started = time.perf_counter()
    grid: dict[tuple[str, str], dict[str, Any]] = {}
    for label in labels:  # column by column: UnlearnDiffAtk, which the leaderboard quotes, first
        for technique in row_names:
            grid[technique, label] = cell(technique, label, args.limit, args.cache)
            log.info("%s × %s: %s", technique, label, {k: v for k, v in grid[technique, label].items()
                                                       if k not in ("request", "adversarial_prompts")})  # fmt: skip
            if not args.no_write:
                write(args.limit, args.cache)
    log.info("grid done in %.0f s (wall, this run; cached cells cost nothing)", time.perf_counter() - started)
    print(table(grid, row_names, labels, args.limit))


if __name__ == "__main__":
    main()
