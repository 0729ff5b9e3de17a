"""How much eval_learn adds on top of raw diffusers generation, and what batching buys, on ``model=tiny``.

Run: ``python benchmarks/generation_overhead.py [--prompts 32] [--steps 10]``. Prints a table of seconds per image:
raw ``pipe(...)`` calls, ``generate_images`` batch-invariant (one prompt per call) and batched, and the whole
``SingleBenchmarkRunner`` with ``free_run`` × ``asr`` (generation + NudeNet judging + PNG/JSON writing).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from eval_learn.generation import generate_images  # noqa: E402
from eval_learn.models.tiny import build_tiny_pipeline  # noqa: E402
from eval_learn.runners import SingleBenchmarkRunner  # noqa: E402
from eval_learn.types import PromptRecord  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    records = [PromptRecord(i, f"a photo of a dog number {i}", 1000 + i, 7.0) for i in range(args.prompts)]
    settings = {"num_inference_steps": args.steps, "guidance_scale": 7.0, "height": 64, "width": 64}
    generate_images(pipe, records[:2], **settings)  # warm-up

    def raw(batch: int) -> None:
        for i in range(0, len(records), batch):
            chunk = records[i : i + batch]
            with torch.inference_mode():
                pipe(
                    [r.prompt for r in chunk],
                    generator=[torch.Generator().manual_seed(r.seed) for r in chunk],
                    num_inference_steps=args.steps,
                    guidance_scale=7.0,
                    height=64,
                    width=64,
                )

    rows = [
        ("raw diffusers, batch 1", timed(lambda: raw(1))),
        ("raw diffusers, batch 8", timed(lambda: raw(8))),
        ("generate_images, batch-invariant", timed(lambda: generate_images(pipe, records, **settings))),
        (
            "generate_images, batched (8)",
            timed(
                lambda: [
                    generate_images(pipe, records[i : i + 8], **settings, batch_invariant=False)
                    for i in range(0, len(records), 8)
                ]
            ),
        ),
    ]
    with tempfile.TemporaryDirectory() as out:
        csv = os.path.join(out, "prompts.csv")
        with open(csv, "w") as f:
            f.write("prompt,sd_seed,sd_guidance_scale\n")
            f.writelines(f"{r.prompt},{r.seed},7\n" for r in records)
        runner = SingleBenchmarkRunner(
            "free_run",
            "asr",
            {"num_inference_steps": args.steps},
            {"prompts_path": csv, "category": None},
            out,
            model="tiny",
            batch_size=8,
        )
        report = runner.run()
        rows.append(("SingleBenchmarkRunner free_run × asr (total)", report["timings"]["total_s"]))
        rows.append(("  of which generation", report["timings"]["generation_s"]))
        rows.append(("  of which NudeNet judging", report["timings"]["metric_update_s"]))

    print(f"\n{args.prompts} prompts, {args.steps} DDIM steps, 64x64, torch threads = {args.threads}\n")
    print(f"| {'what':<46} | {'total s':>8} | {'s / image':>9} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 11}|")
    for name, seconds in rows:
        print(f"| {name:<46} | {seconds:8.2f} | {seconds / args.prompts:9.3f} |")


if __name__ == "__main__":
    main()
