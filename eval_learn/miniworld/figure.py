"""Regenerate the README's MiniWorld leaderboard and figure: what each technique erases, and what it costs.

    python -m eval_learn.miniworld.figure --out docs                 # every registered technique, erasing "red"
    python -m eval_learn.miniworld.figure --out docs --techniques free_run esd uce

Writes ``miniworld_table.md`` (per technique: ASR on red prompts, UA, IRA on near and far neighbours, the
technique's preparation time and the generation time, from real runs of the multi runner with the same seeds) and
``miniworld_erasure.png`` (the same six prompts and six seeds per technique, labelled). Each technique runs with its
MiniWorld preset (``conf/preset/miniworld_<technique>.yaml``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from eval_learn.miniworld.world import prompt
from eval_learn.registry import TECHNIQUES
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner
from eval_learn.runtime import quiet_libraries
from eval_learn.types import PromptRecord

log = logging.getLogger(__name__)
ROWS = [("red", "circle"), ("red", "square"), ("orange", "triangle"), ("purple", "cross"), ("blue", "square"),
        ("green", "circle")]  # fmt: skip
SEEDS = 6
SCALE = 3  # pixels per MiniWorld pixel in the figure
LABEL_W, HEADER_H, GAP = 150, 18, 10


def grid(technique: str, records: list[PromptRecord], cache: Path) -> np.ndarray:
    runner = SingleBenchmarkRunner(technique, "asr", {}, {}, output_dir=cache, model="miniworld", cache_dir=cache)
    tech = runner.technique_cls(runner.technique_config, runner.context)
    tech.prepare()
    images = [np.asarray(im) for im in tech.generate(records)]
    tech.close()
    rows = [np.concatenate(images[r * SEEDS : (r + 1) * SEEDS], axis=1) for r in range(len(ROWS))]
    return np.concatenate(rows, axis=0)


def figure(panels: dict[str, np.ndarray]) -> Image.Image:
    """Panels side by side, a technique name over each, the prompt at the start of each row."""
    height, width = (x * SCALE for x in next(iter(panels.values())).shape[:2])
    canvas = Image.new("RGB", (LABEL_W + len(panels) * (width + GAP), HEADER_H + height), "white")
    draw = ImageDraw.Draw(canvas)
    row_h = height // len(ROWS)
    for r, (colour, shape) in enumerate(ROWS):
        draw.text((4, HEADER_H + r * row_h + row_h // 2 - 5), f'"{prompt(colour, shape)}"', fill="black")
    for i, (name, panel) in enumerate(panels.items()):
        x = LABEL_W + i * (width + GAP)
        draw.text((x + 2, 3), name, fill="black")
        canvas.paste(Image.fromarray(panel).resize((width, height), Image.NEAREST), (x, HEADER_H))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--techniques", nargs="+", default=None, help="default: every registered technique")
    parser.add_argument("--cache", type=Path, default=None, help="cache for weights and images (default: a temp folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    quiet_libraries()
    techniques = args.techniques or ["free_run", *(t for t in TECHNIQUES.names() if t != "free_run")]
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="eval_learn_figure_"))
    lines = [
        "| technique | ASR: red drawn for red prompts ↓ | UA ↑ | IRA near (orange, purple) ↑ | IRA far ↑ | "
        "preparation s | generation s |",
        "|---|---|---|---|---|---|---|",
    ]
    for technique in techniques:
        runner = MultiBenchmarkRunner(technique, ["asr", "ua_ira"], {}, {}, output_dir=cache / "runs",
                                      model="miniworld", cache_dir=cache, image_cache="off")  # fmt: skip
        report = runner.run()
        asr, ua = report["metric_results"]["asr"], report["metric_results"]["ua_ira"]["details"]
        low, high = asr["details"]["ci95_wilson"]
        timings = report["timings"]
        lines.append(
            f"| {technique} | {asr['value']:.2f} [{low:.2f}, {high:.2f}] | {ua['ua']:.2f} | {ua['ira_near']:.2f} | "
            f"{ua['ira_far']:.2f} | {timings['technique_prepare_s']:.0f} | {timings.get('generation_s', 0):.0f} |"
        )
        log.info(lines[-1])
    (args.out / "miniworld_table.md").write_text("\n".join(lines) + "\n")
    records = [PromptRecord(r * SEEDS + k, prompt(c, s), 2000 + k) for r, (c, s) in enumerate(ROWS)
               for k in range(SEEDS)]  # fmt: skip
    figure({t: grid(t, records, cache) for t in techniques}).save(args.out / "miniworld_erasure.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
