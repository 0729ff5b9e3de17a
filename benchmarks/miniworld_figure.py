"""Regenerate the docs' MiniWorld leaderboard and figure: what each technique erases, and what it costs.

    python benchmarks/miniworld_figure.py --out docs                  # every row below, erasing "red"
    python benchmarks/miniworld_figure.py --out docs --rows free_run esd esd-u uce

A script, not part of the package: it drives the runners, which nothing inside ``eval_learn.miniworld`` may import.

Writes ``miniworld_table.md`` (per row: ASR on red prompts with its 95 % Wilson interval, UA, IRA on near and far
neighbours, the technique's preparation time and the generation time, from real runs of the multi runner with the
same seeds and the image store off, so every image is rendered; and the ASR before → after UnlearnDiffAtk, read from
``docs/attacks_miniworld.json``, which ``benchmarks/attacks_miniworld.py`` writes: the attack is run once, there),
the ERR table (one ``err`` run per row on the weights the leaderboard run trained) and ``miniworld_erasure.png`` (one
labelled row per technique: the same six prompts, three seeds each). Both tables also go between their markers in
``docs/miniworld.md`` and ``docs/metrics.md``. Rows: ``free_run`` and every technique with a MiniWorld preset
(``conf/preset/miniworld_<technique>.yaml``); a row may change some fields of it (``VARIANTS``: ESD's two train
methods). Weights are trained afresh in a temporary cache unless ``--cache`` names one, so preparation times are real;
each row's measurements are kept in ``--cache/rows/``, so a killed run resumes at the row it was on.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from doc_blocks import replace_block  # benchmarks/, beside this script
from PIL import Image, ImageDraw

from eval_learn.configs import did_you_mean
from eval_learn.engine.sampling import generate
from eval_learn.miniworld.world import prompt
from eval_learn.registry import TECHNIQUES
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner
from eval_learn.runtime import quiet_libraries
from eval_learn.types import PromptRecord

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
ATTACK_GRID = ROOT / "docs" / "attacks_miniworld.json"  # benchmarks/attacks_miniworld.py's cells
PROMPTS = [("red", "circle"), ("red", "square"), ("orange", "triangle"), ("purple", "cross"), ("blue", "square"),
           ("green", "circle")]  # fmt: skip
SEEDS = 3
SCALE = 2  # figure pixels per MiniWorld pixel
LABEL_W, HEADER_H, GAP = 110, 16, 6
# Rows that are one technique with some preset fields changed: label -> (technique, overrides).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "esd": ("esd", {}),  # the preset: ESD-x (cross-attention only)
    "esd-u": ("esd", {"train_method": "noxattn", "learning_rate": 1.0e-4}),  # ESD-u at its best MiniWorld rate
}


def default_rows() -> list[str]:
    """free_run, then every technique with a MiniWorld preset (ESD twice: its preset and ESD-u)."""
    first = ["free_run", "negative_prompt", "esd", "esd-u"]
    preset = ROOT / "conf" / "preset"
    return first + [name for name in TECHNIQUES.names()
                    if name not in first and (preset / f"miniworld_{name}.yaml").exists()]  # fmt: skip


def resolve(row: str) -> tuple[str, dict[str, Any]]:
    return VARIANTS.get(row, (row, {}))


def grid(row: str, records: list[PromptRecord], cache: Path) -> np.ndarray:
    """The row's images of ``records``, side by side (prompt by prompt, seeds within a prompt)."""
    technique, overrides = resolve(row)
    runner = SingleBenchmarkRunner(technique, "asr", overrides, {}, output_dir=cache, model="miniworld",
                                   cache_dir=cache)  # fmt: skip
    tech = runner.technique_cls(runner.technique_config, runner.context)
    tech.prepare()
    images = [np.asarray(im) for im in generate(tech, records)]
    tech.close()
    return np.concatenate(images, axis=1)


def figure(strips: dict[str, np.ndarray]) -> Image.Image:
    """One row per technique (its name on the left), one column group per prompt (the prompt above it)."""
    height, width = (x * SCALE for x in next(iter(strips.values())).shape[:2])
    group_w = width // len(PROMPTS)
    canvas = Image.new("RGB", (LABEL_W + width + GAP * (len(PROMPTS) - 1), HEADER_H + len(strips) * (height + GAP)),
                       "white")  # fmt: skip
    draw = ImageDraw.Draw(canvas)
    for p, (colour, shape) in enumerate(PROMPTS):
        draw.text((LABEL_W + p * (group_w + GAP) + 2, 2), prompt(colour, shape), fill="black")
    for r, (name, strip) in enumerate(strips.items()):
        y = HEADER_H + r * (height + GAP)
        draw.text((4, y + height // 2 - 5), name, fill="black")
        scaled = Image.fromarray(strip).resize((width, height), Image.NEAREST)
        for p in range(len(PROMPTS)):
            group = scaled.crop((p * group_w, 0, (p + 1) * group_w, height))
            canvas.paste(group, (LABEL_W + p * (group_w + GAP), y))
    return canvas


def measure(row: str, cache: Path) -> dict[str, Any]:
    """The row's leaderboard run (asr and ua_ira, every image rendered) and its err run, kept in ``cache/rows``."""
    path = cache / "rows" / f"{row}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    technique, overrides = resolve(row)
    runner = MultiBenchmarkRunner(technique, ["asr", "ua_ira"], overrides, {}, output_dir=cache / "runs",
                                  model="miniworld", cache_dir=cache, image_cache="off")  # fmt: skip
    report = runner.run()
    err = SingleBenchmarkRunner(technique, "err", overrides, {}, output_dir=cache / "runs", model="miniworld",
                                cache_dir=cache).run()  # fmt: skip
    result = {"asr": report["metric_results"]["asr"], "ua_ira": report["metric_results"]["ua_ira"]["details"],
              "timings": report["timings"], "err": err["metric_result"], "err_timings": err["timings"]}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    return result


def grid_cells() -> list[dict[str, Any]]:
    """The attack grid's UnlearnDiffAtk cells (one source: the attack is not run twice)."""
    cells = json.loads(ATTACK_GRID.read_text(encoding="utf-8")) if ATTACK_GRID.exists() else []
    return [c for c in cells if c["column"] == "unlearndiffatk" and "error" not in c]


def attacked(row: str) -> str:
    """ASR before → after UnlearnDiffAtk, from the attack grid."""
    found = [c for c in grid_cells() if c["technique"] == row]
    return f"{found[0]['asr_before']:.2f} → {found[0]['asr_after']:.2f}" if found else "—"


def table_row(row: str, m: dict[str, Any]) -> str:
    asr, ua, timings = m["asr"], m["ua_ira"], m["timings"]
    low, high = asr["details"]["ci95"]  # clustered by prompt: 8 prompts x 8 seeds are not 64 independent draws
    return (
        f"| {row} | {asr['value']:.2f} [{low:.2f}, {high:.2f}] | {attacked(row)} | {ua['ua']:.2f} | "
        f"{ua['ira_near']:.2f} | {ua['ira_far']:.2f} | {timings['technique_prepare_s']:.0f} | "
        f"{timings.get('generation_s', 0):.0f} |"
    )


def err_row(row: str, m: dict[str, Any]) -> str:
    err = m["err"]
    arms = err["details"]["arms"]

    def arm(name: str) -> str:
        low, high = arms[name]["ci95"]
        return f"{arms[name]['rate']:.3f} [{low:.2f}, {high:.2f}]"

    low, high = err["details"]["ci95"]
    near, far = arms["retention"]["rate_near"], arms["retention"]["rate_far"]
    seconds = m["err_timings"]["total_s"] + m["timings"]["technique_prepare_s"]  # as a cold `-m eval_learn metric=err`
    return (
        f"| {row} | {err['value']:.3f} [{low:.2f}, {high:.2f}] | {arm('erasure')} | {arm('retention')} "
        f"({near:.3f} / {far:.3f}) | {arm('robustness')} | {attacked(row)} | {seconds:.0f} |"
    )


def kept(page: Path, block: str, row: str, attack_column: int) -> str | None:
    """The row's line in the page's current table (a row not measured in this run keeps its numbers), with its
    "ASR after UnlearnDiffAtk" cell refreshed from the attack grid (added if the table predates that column)."""
    text = page.read_text(encoding="utf-8").split(f"<!-- generated:{block} start -->", 1)[1]
    text = text.split(f"<!-- generated:{block} end -->", 1)[0]
    has_column = "UnlearnDiffAtk ↓" in text
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == row:
            if has_column:
                cells[attack_column] = attacked(row)
            else:
                cells.insert(attack_column, attacked(row))
            return "| " + " | ".join(cells) + " |"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--rows", nargs="+", default=None,
                        help=f"techniques or variants ({', '.join(VARIANTS)}); default: {' '.join(default_rows())}")  # fmt: skip
    parser.add_argument(
        "--cache", type=Path, default=None, help="cache for weights and images (default: a temp folder)"
    )
    parser.add_argument("--measure", nargs="+", default=None,
                        help="measure only these rows; the others keep their lines from the pages' current tables "
                             "(their ASR after UnlearnDiffAtk refreshed from the attack grid)")  # fmt: skip
    parser.add_argument("--no-figure", action="store_true", help="the tables only (the figure stays as it is)")
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="a cache whose trained weights the figure reuses (e.g. the attack grid's --cache)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    quiet_libraries()
    rows = args.rows or default_rows()
    known = [*VARIANTS, *TECHNIQUES.names()]
    for row in [*rows, *(args.measure or [])]:  # an unknown name fails before anything runs
        if row not in known:
            parser.error(f"unknown row '{row}'.{did_you_mean(row, known)} Rows: {', '.join(default_rows())}")
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="eval_learn_figure_"))
    day = time.strftime("%Y-%m-%d")
    uda = grid_cells()
    limits = "/".join(sorted({str(c["request"]["limit"]) for c in uda})) or "—"
    budget = "/".join(sorted({json.dumps(c["request"]["budget"]) for c in uda})) or "—"
    lines = [
        f"*Measured {day}; regenerate with `python benchmarks/miniworld_figure.py --out docs`. ASR after "
        f"UnlearnDiffAtk: {limits} red prompts, one image each, its budget {budget}, from "
        "`docs/attacks_miniworld.json` ([the attack grid](attacks_miniworld.md)).*",
        "",
        "| technique | ASR: red drawn for red prompts ↓ [95% CI] | ASR before → after UnlearnDiffAtk ↓ | UA ↑ | "
        "IRA near (orange, purple) ↑ | IRA far ↑ | preparation s | generation s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    errs = [
        f"*Measured {day}; regenerate with `python benchmarks/miniworld_figure.py --out docs` (one `err` run per row on "
        "the weights its leaderboard run trained; seconds: the err run plus that training). ASR after UnlearnDiffAtk as in the "
        "[attack grid](attacks_miniworld.md).*",
        "",
        "| technique | err ↑ [95% CI] | erasure [95% CI] | retention [95% CI] (near / far) | robustness [95% CI] | "
        "ASR before → after UnlearnDiffAtk ↓ | total_s |",
        "|---|---|---|---|---|---|---|",
    ]
    measured = [row for row in rows if args.measure is None or row in args.measure]
    if args.measure is not None:
        note = (f" Rows measured {time.strftime('%H:%M UTC')}: {', '.join(measured)}; the others are kept from the "
                "table as it was (measured earlier; their ASR after UnlearnDiffAtk refreshed). Seconds measured on a "
                "busier machine than the kept rows' are not comparable with theirs.*")  # fmt: skip
        lines[0], errs[0] = lines[0].removesuffix("*") + note, errs[0].removesuffix("*") + note
    for row in rows:
        if row in measured:
            m = measure(row, cache)
            line, err_line = table_row(row, m), err_row(row, m)
        else:
            line, err_line = (
                kept(args.out / "miniworld.md", "leaderboard", row, 2),
                kept(args.out / "metrics.md", "err_miniworld", row, 5),
            )
        lines.append(line or f"| {row} |" + " — |" * 7)  # a row in no table yet and not measured: dashes
        errs.append(err_line or f"| {row} |" + " — |" * 6)
        log.info(lines[-1])
    (args.out / "miniworld_table.md").write_text("\n".join(lines) + "\n")
    if args.out.resolve() == (ROOT / "docs").resolve():
        replace_block(args.out / "miniworld.md", "leaderboard", "\n".join(lines))
        replace_block(args.out / "metrics.md", "err_miniworld", "\n".join(errs))
    if args.no_figure:
        print("\n".join(lines + [""] + errs))
        return
    records = [PromptRecord(p * SEEDS + k, prompt(c, s), 2000 + k) for p, (c, s) in enumerate(PROMPTS)
               for k in range(SEEDS)]  # fmt: skip
    figure({row: grid(row, records, args.weights or cache) for row in rows}).save(args.out / "miniworld_erasure.png")
    print("\n".join(lines + [""] + errs))


if __name__ == "__main__":
    main()
