"""What the engine costs and saves, in one table: overhead against plain diffusers, reuse through the image store,
memory against the number of prompts, and resuming after a kill.

    python benchmarks/engine.py                 # all rows, on the CPU (MiniWorld, one torch thread)
    python benchmarks/engine.py --rows overhead # one row
    python benchmarks/engine.py --sd14 FOLDER   # on a CUDA machine: the overhead row for an SD-1.4-shaped model

Rows:
- overhead: ``SingleBenchmarkRunner`` (free_run × asr on the MiniWorld, the store off so every image is rendered,
  PNGs and reports written) against a plain loop of ``pipe(...)`` calls plus the same MiniWorld judge over the same
  images, at the same batch size. Target: 1.10x or less.
- reuse: a three-metric run whose prompt sets overlap (asr on red, ua_ira on red, asr on orange), cold store against
  warm store: values identical, warm at least 20x faster; images rendered by each.
- memory: peak RSS of a run over 100 against 1,000 prompts (each in a fresh process). Target: ratio 1.2 or less.
- resume: a run killed (SIGKILL) when half of its images are stored, then run again: the second part's time against a
  clean run's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

ROWS: list[tuple[str, str, str]] = []  # (row, measured, note)


def row(name: str, measured: str, note: str) -> None:
    ROWS.append((name, measured, note))
    print(f"  {name}: {measured} ({note})", flush=True)


def overhead(model: str, prompts: int, batch: int, device: str, repeats: int = 2) -> None:
    """The runner against plain diffusers + the same judge, same images, same batch size. Both are warmed up first
    (imports, first-call initialisation) and timed ``repeats`` times, alternating; the best time of each counts."""
    import numpy as np
    from PIL import Image

    from eval_learn.judges.base import Judge
    from eval_learn.models import load_pipeline, resolve_model
    from eval_learn.registry import JUDGES
    from eval_learn.runners import SingleBenchmarkRunner
    from eval_learn.runtime import resolve_dtype

    spec = resolve_model(model)
    metric = {"limit": prompts // 8, "samples_per_prompt": 8} if model == "miniworld" else {"limit": prompts}

    def ours() -> tuple[float, dict, list]:
        with tempfile.TemporaryDirectory() as out:
            runner = SingleBenchmarkRunner("free_run", "asr", {}, metric, out, model=model, batch_size=batch,
                                           cache_dir=Path(out) / "cache", image_cache="off", device=device)  # fmt: skip
            start = time.perf_counter()
            report = runner.run()
            seconds = time.perf_counter() - start
            records = runner.metric.cls(runner.metric.config, runner.context).load_dataset().records
        return seconds, report, records

    def plain(records: list, judge_name: str) -> float:
        judge: Judge = JUDGES.get(judge_name)(JUDGES.get(judge_name).config_cls(), device)
        start = time.perf_counter()
        pipe = load_pipeline(spec, device, resolve_dtype("auto", device))
        judge.judge([Image.new("RGB", (spec.width, spec.height))])  # load the judge
        for i in range(0, len(records), batch):
            chunk = records[i : i + batch]
            with torch.inference_mode():
                images = pipe(
                    prompt=[r.prompt for r in chunk],
                    generator=[torch.Generator("cpu").manual_seed(r.seed) for r in chunk],
                    num_inference_steps=spec.num_inference_steps,
                    guidance_scale=chunk[0].guidance_scale or spec.guidance_scale,
                    height=spec.height,
                    width=spec.width,
                    output_type="np",
                ).images
            judge.judge([Image.fromarray((np.asarray(im) * 255).round().astype(np.uint8)) for im in images])
        return time.perf_counter() - start

    _, report, records = ours()  # warm-up of both paths
    judge_name = report["metric_config"]["judge"]["name"]
    plain(records[:batch], judge_name)
    ours_s, plain_s = [], []
    for _ in range(repeats):
        ours_s.append(ours()[0])
        plain_s.append(plain(records, judge_name))
    where = f"{model} on {device}" + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else "")
    best_ours, best_plain = min(ours_s), min(plain_s)
    row("overhead", f"{best_ours / best_plain:.2f}x ({best_ours:.1f} s vs {best_plain:.1f} s)",
        f"{len(records)} images, batch {batch}, {where}; best of {repeats}, after a warm-up; pipeline and judge "
        f"loading included in both")  # fmt: skip


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "eval_learn", *args], cwd=cwd, env=env, capture_output=True,
                          text=True)  # fmt: skip
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    reports = sorted(cwd.rglob("multi/report.json")) or sorted(cwd.rglob("report.json"))
    newest = max(reports, key=lambda p: p.stat().st_mtime)
    return elapsed, json.loads(newest.read_text())


def reuse() -> None:
    from eval_learn.metrics.asr import ASR
    from eval_learn.registry import METRICS
    from eval_learn.runners import MultiBenchmarkRunner

    class OrangeASR(ASR):
        """A third metric whose prompts overlap ua_ira's (orange is red's near neighbour)."""

        name = "asr_orange"

    if "asr_orange" not in METRICS.names():
        METRICS.add("asr_orange", OrangeASR)
    metrics = ["asr", "ua_ira", "asr_orange"]
    configs = {"asr_orange": {"concept": "orange"}}
    with tempfile.TemporaryDirectory() as tmp:
        results, seconds = [], []
        for _ in ("cold", "warm"):
            runner = MultiBenchmarkRunner("free_run", metrics, {}, configs, tmp, model="miniworld",
                                          cache_dir=Path(tmp) / "cache")  # fmt: skip
            start = time.perf_counter()
            results.append(runner.run())
            seconds.append(time.perf_counter() - start)
    cold, warm = results
    same = cold["metric_results"] == warm["metric_results"]
    row("reuse, cold", f"{seconds[0]:.1f} s", f"{cold['cache_stats']['images_requested']} images asked for by 3 "
        f"metrics, {cold['cache_stats']['images_generated']} rendered")  # fmt: skip
    row("reuse, warm", f"{seconds[1]:.2f} s", f"{seconds[0] / seconds[1]:.0f}x faster, "
        f"{warm['cache_stats']['images_generated']} rendered, values identical: {same}")  # fmt: skip


def memory() -> None:
    peaks = {}
    for prompts in (100, 1000):
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            csv = tmp_path / "prompts.csv"
            csv.write_text("prompt,sd_seed\n" + "".join(f"a red circle number {i},{i}\n" for i in range(prompts)))
            env = {**os.environ, "EVAL_LEARN_CACHE": str(tmp_path / "cache")}
            _, report = run_cli(["model=tiny", "technique=free_run", "metric=asr", f"metric.config.prompts_path={csv}",
                                 "technique.config.num_inference_steps=2", f"hydra.run.dir={tmp_path}"], env,
                                tmp_path)  # fmt: skip
            peaks[prompts] = report["peak_memory"]["cpu_max_rss_mb"]
    row("memory", f"{peaks[1000] / peaks[100]:.2f} ({peaks[100]:.0f} MB at 100 prompts, {peaks[1000]:.0f} MB at 1,000)",
        "peak RSS of the whole process, model=tiny, 2 steps")  # fmt: skip


def resume() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        args = ["technique=free_run", "metric=asr", "metric.config.samples_per_prompt=16", "num_threads=1"]
        clean_env = {**os.environ, "EVAL_LEARN_CACHE": str(tmp_path / "clean_cache")}
        (tmp_path / "clean").mkdir()
        clean_s, clean = run_cli([*args, f"hydra.run.dir={tmp_path / 'clean'}"], clean_env, tmp_path / "clean")
        total = clean["cache_stats"]["images_generated"]
        cache = tmp_path / "cache"
        env = {**os.environ, "EVAL_LEARN_CACHE": str(cache)}
        proc = subprocess.Popen([sys.executable, "-m", "eval_learn", *args, f"hydra.run.dir={tmp_path / 'killed'}"],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        while len(list(cache.glob("images/*/*.png"))) < total // 2 and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        (tmp_path / "again").mkdir()
        again_s, again = run_cli([*args, f"hydra.run.dir={tmp_path / 'again'}"], env, tmp_path / "again")
    same = again["metric_result"] == clean["metric_result"]
    row("resume", f"{again_s:.1f} s after a kill at {total - again['cache_stats']['images_generated']}/{total} "
        f"images vs {clean_s:.1f} s clean", f"processes, MiniWorld asr; values identical: {same}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=["overhead", "reuse", "memory", "resume"])
    parser.add_argument("--prompts", type=int, default=128, help="images in the overhead row")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sd14", type=Path, help="an SD-1.4-shaped pipeline folder: the overhead row on CUDA")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    if "overhead" in args.rows:
        overhead("miniworld", args.prompts, args.batch, "cpu")
        if args.sd14 is not None and torch.cuda.is_available():
            overhead(str(args.sd14), 24, args.batch, "cuda")
    if "reuse" in args.rows:
        reuse()
    if "memory" in args.rows:
        memory()
    if "resume" in args.rows:
        resume()
    print("\n| row | measured | note |\n|---|---|---|")
    for name, measured, note in ROWS:
        print(f"| {name} | {measured} | {note} |")


if __name__ == "__main__":
    main()
