"""Regenerate the docs' MiniWorld leaderboard and figure: what each technique erases, and what it costs.

    python benchmarks/miniworld_figure.py --out docs                  # every row below, erasing "red"
    python benchmarks/miniworld_figure.py --out docs --rows free_run esd esd-u uce

A script, not part of the package: it drives the runners, which nothing inside ``eval_learn.miniworld`` may import.

Writes ``miniworld_table.md`` (per row: ASR on red prompts with its 95 % Wilson interval, UA, IRA on near and far
neighbours, the technique's preparation time and the generation time, from real runs of the multi runner with the
same seeds and the image store off, so every image is rendered) and ``miniworld_erasure.png`` (one labelled row per
technique: the same six prompts, three seeds each). Each technique runs with its MiniWorld preset
(``conf/preset/miniworld_<technique>.yaml``); a row may change some fields of it (``VARIANTS``: ESD's two train
methods). Weights are trained afresh in a temporary cache unless ``--cache`` names one, so preparation times are real.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from eval_learn.configs import did_you_mean
from eval_learn.engine.sampling import generate
from eval_learn.miniworld.world import prompt
from eval_learn.registry import TECHNIQUES
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner
from eval_learn.runtime import quiet_libraries
from eval_learn.types import PromptRecord

log = logging.getLogger(__name__)
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
    first = ["free_run", "negative_prompt", "esd", "esd-u"]
    # Every technique that makes images (``external`` judges images made elsewhere: it has nothing to draw here).
    return first + [name for name in TECHNIQUES.names()
                    if name not in first and not TECHNIQUES.get(name).supplies_images]  # fmt: skip


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


def table_row(row: str, cache: Path) -> str:
    technique, overrides = resolve(row)
    runner = MultiBenchmarkRunner(technique, ["asr", "ua_ira"], overrides, {}, output_dir=cache / "runs",
                                  model="miniworld", cache_dir=cache, image_cache="off")  # fmt: skip
    report = runner.run()
    asr, ua = report["metric_results"]["asr"], report["metric_results"]["ua_ira"]["details"]
    low, high = asr["details"]["ci95"]  # clustered by prompt: 8 prompts x 8 seeds are not 64 independent draws
    timings = report["timings"]
    return (
        f"| {row} | {asr['value']:.2f} [{low:.2f}, {high:.2f}] | {ua['ua']:.2f} | {ua['ira_near']:.2f} | "
        f"{ua['ira_far']:.2f} | {timings['technique_prepare_s']:.0f} | {timings.get('generation_s', 0):.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--rows", nargs="+", default=None,
                        help=f"techniques or variants ({', '.join(VARIANTS)}); default: {' '.join(default_rows())}")  # fmt: skip
    parser.add_argument(
        "--cache", type=Path, default=None, help="cache for weights and images (default: a temp folder)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    quiet_libraries()
    rows = args.rows or default_rows()
    known = [*VARIANTS, *TECHNIQUES.names()]
    for row in rows:  # an unknown name fails before anything runs
        if row not in known:
            parser.error(f"unknown row '{row}'.{did_you_mean(row, known)} Rows: {', '.join(default_rows())}")
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="eval_learn_figure_"))
    lines = [
        f"*Measured {time.strftime('%Y-%m-%d')}; regenerate with `python benchmarks/miniworld_figure.py --out docs`.*",
        "",
        "| technique | ASR: red drawn for red prompts ↓ [95% CI] | UA ↑ | IRA near (orange, purple) ↑ | IRA far ↑ | "
        "preparation s | generation s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(table_row(row, cache))
        log.info(lines[-1])
    (args.out / "miniworld_table.md").write_text("\n".join(lines) + "\n")
    records = [PromptRecord(p * SEEDS + k, prompt(c, s), 2000 + k) for p, (c, s) in enumerate(PROMPTS)
               for k in range(SEEDS)]  # fmt: skip
    figure({row: grid(row, records, cache) for row in rows}).save(args.out / "miniworld_erasure.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
