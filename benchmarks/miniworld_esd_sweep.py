"""Sweep ESD settings on the MiniWorld: erasure of the target vs retention of its neighbours, per setting.

Run: ``python benchmarks/miniworld_esd_sweep.py [--concept red]``. This is how ``conf/preset/miniworld_esd.yaml``
was chosen: the setting that erases the concept clearly while keeping the most of its neighbours. Prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from eval_learn.runners import MultiBenchmarkRunner  # noqa: E402


def run(technique: str, config: dict, concept: str, out: str) -> tuple[dict, float]:
    start = time.perf_counter()
    runner = MultiBenchmarkRunner(
        technique, ["asr", "ua_ira"], config, {}, output_dir=out, model="miniworld", cache_dir=out,
    )  # fmt: skip
    results = runner.run()["metric_results"]
    return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concept", default="red")
    parser.add_argument("--methods", nargs="+", default=["xattn", "noxattn"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4])
    parser.add_argument("--steps", nargs="+", type=int, default=[100])
    parser.add_argument("--eta", nargs="+", type=float, default=[1.0])
    parser.add_argument("--batch", nargs="+", type=int, default=[8])
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = tempfile.mkdtemp(prefix="esd_sweep_")
    rows = [("free_run", "-", "-", "-", "-", *run("free_run", {}, args.concept, out))]
    grid = itertools.product(args.methods, args.lrs, args.steps, args.eta, args.batch)
    for method, lr, steps, eta, batch in grid:
        cfg = {"erase_concept": args.concept, "train_method": method, "learning_rate": lr, "train_steps": steps,
               "negative_guidance": eta, "train_batch_size": batch}  # fmt: skip
        rows.append(("esd", f"{method}, batch {batch}", lr, steps, eta, *run("esd", cfg, args.concept, out)))
    print(f"\nMiniWorld, erase '{args.concept}' (asr on {args.concept} prompts; UA/IRA from ua_ira)\n")
    print("| technique | method | lr | steps | eta | ASR ↓ | UA ↑ | IRA near ↑ | IRA far ↑ | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for technique, method, lr, steps, eta, results, seconds in rows:
        d = results["ua_ira"]["details"]
        print(f"| {technique} | {method} | {lr} | {steps} | {eta} | {results['asr']['value']:.2f} | {d['ua']:.2f} | "
              f"{d['ira_near']:.2f} | {d['ira_far']:.2f} | {seconds:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
