"""Regenerate the README's MiniWorld figure and table: what erasure does, and what it costs, per technique.

    python -m eval_learn.miniworld.figure --out docs

Writes ``miniworld_erasure.png`` (the same prompts and seeds, before and after erasure) and ``miniworld_table.md``
(ASR on the erased concept, UA, IRA on near and far neighbours, per technique), from real runs of the runners.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from eval_learn.miniworld.world import prompt
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner
from eval_learn.types import PromptRecord

ROWS = [("red", "circle"), ("red", "square"), ("orange", "triangle"), ("purple", "cross"), ("blue", "square"),
        ("green", "circle")]  # fmt: skip
SEEDS = 6


def grid(technique: str, records: list[PromptRecord], cache: Path) -> np.ndarray:
    runner = SingleBenchmarkRunner(technique, "asr", {}, {}, output_dir=cache, model="miniworld", cache_dir=cache)
    tech = runner.technique_cls(runner.technique_config, runner.context)
    tech.prepare()
    images = [np.asarray(im) for im in tech.generate(records)]
    tech.close()
    rows = [np.concatenate(images[r * SEEDS : (r + 1) * SEEDS], axis=1) for r in range(len(ROWS))]
    return np.concatenate(rows, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--techniques", nargs="+", default=["esd"])
    parser.add_argument("--cache", type=Path, default=None, help="technique weight cache (default: a temp folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="eval_learn_figure_"))
    records = [PromptRecord(len(ROWS) * 0 + r * SEEDS + k, prompt(c, s), 2000 + k) for r, (c, s) in enumerate(ROWS)
               for k in range(SEEDS)]  # fmt: skip
    panels = [grid(t, records, cache) for t in ["free_run", *args.techniques]]
    gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
    figure = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
    Image.fromarray(figure).resize((figure.shape[1] * 4, figure.shape[0] * 4), Image.NEAREST).save(
        args.out / "miniworld_erasure.png"
    )
    lines = [
        "| technique | ASR: red still drawn for red prompts ↓ | UA ↑ | IRA near (orange, purple) ↑ | IRA far ↑ | (UA+IRA)/2 ↑ |",
        "|---|---|---|---|---|---|",
    ]
    for technique in ["free_run", *args.techniques]:
        runner = MultiBenchmarkRunner(technique, ["asr", "ua_ira"], {}, {}, output_dir=cache / "runs",
                                      model="miniworld", cache_dir=cache)  # fmt: skip
        results = runner.run()["metric_results"]
        asr, ua = results["asr"], results["ua_ira"]["details"]
        lines.append(
            f"| {technique} | {asr['value']:.2f} (n={asr['details']['total_images']}) | {ua['ua']:.2f} | "
            f"{ua['ira_near']:.2f} | {ua['ira_far']:.2f} | {results['ua_ira']['value']:.2f} |"
        )
    (args.out / "miniworld_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
