"""The MiniWorld attack table: each technique's MiniWorld preset erases red, each registered attack attacks it.

A script, not part of the package. For every technique (its ``conf/preset/miniworld_<technique>.yaml`` applies, as
in every MiniWorld run) and every attack in the registry, ``asr`` runs on the first ``--limit`` red prompts of the
MiniWorld set, one image per prompt, with the attack's CPU budget below; the table gives the ASR before → after
attack with the 95 % intervals and the seconds the attacks took (the searches themselves; a prompt whose plain image
already shows red is not attacked). Prints the Markdown table; ``--out FILE`` also writes it.

    python benchmarks/miniworld_attacks.py --out docs/attacks_miniworld_table.md
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from eval_learn.registry import ATTACKS
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import quiet_libraries

# The CPU budget per attack (its settings; every attack has time_limit_s, per prompt).
BUDGETS: dict[str, dict[str, Any]] = {
    "unlearndiffatk": {"timesteps": 5, "iterations": 10, "time_limit_s": 60},
}
DEFAULT_BUDGET: dict[str, Any] = {"time_limit_s": 60}
TECHNIQUES = ["negative_prompt", "sld", "safree", "uce", "esd", "ca", "mace"]


def cell(technique: str, attack: str, limit: int, cache: Path) -> str:
    metric = {
        "limit": limit,
        "samples_per_prompt": 1,
        "attack": {"name": attack, **BUDGETS.get(attack, DEFAULT_BUDGET)},
    }
    runner = SingleBenchmarkRunner(technique, "asr", {}, metric, output_dir=cache / "runs", model="miniworld",
                                   cache_dir=cache, batch_size=1)  # fmt: skip
    block = runner.run()["metric_result"]["details"]["attack"]
    (b_low, b_high), (a_low, a_high) = block["asr_before_ci95"], block["asr_after_ci95"]
    return (f"{block['asr_before']:.2f} [{b_low:.2f}, {b_high:.2f}] → {block['asr_after']:.2f} [{a_low:.2f}, "
            f"{a_high:.2f}]; {block['attack_successes']}/{block['attacked_images']} attacked, "
            f"{block['attack_seconds_total']:.0f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--techniques", nargs="+", default=TECHNIQUES)
    parser.add_argument("--attacks", nargs="+", default=None, help="default: every registered attack")
    parser.add_argument("--limit", type=int, default=8, help="red prompts (one image each)")
    parser.add_argument("--cache", type=Path, default=None, help="weights, images and attack outcomes (default: temp)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    quiet_libraries()
    attacks = args.attacks or ATTACKS.names()
    cache = args.cache or Path(tempfile.mkdtemp(prefix="eval_learn_attacks_"))
    budgets = "; ".join(f"{a}: {BUDGETS.get(a, DEFAULT_BUDGET)}" for a in attacks)
    lines = [
        f"*Measured {time.strftime('%Y-%m-%d')} on a shared 2-core CPU (seconds are upper bounds); regenerate with "
        f"`python benchmarks/miniworld_attacks.py`. {args.limit} red prompts, one image each; budgets {budgets}.*",
        "",
        "| technique | " + " | ".join(f"{a}: ASR before → after [95% CI]; successes; attack s" for a in attacks) + " |",
        "|---|" + "---|" * len(attacks),
    ]
    for technique in args.techniques:
        cells = [cell(technique, attack, args.limit, cache) for attack in attacks]
        lines.append(f"| {technique} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
