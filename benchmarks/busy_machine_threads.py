"""Is the default thread setting safe on a machine whose cores are busy with other work?

Run: ``python benchmarks/busy_machine_threads.py [--repeats 2] [--load N] [--full] [--spinning]``. Times the main
command (``python -m eval_learn``, as a user runs it) with the default settings and with ``num_threads=1``, on the
machine as it is ("as found") and with N extra busy processes (default: one per core), each in a fresh cache so that
ESD trains and every image is rendered. ``--spinning`` adds the old default (OpenMP threads spinning while they
wait, ``OMP_WAIT_POLICY=ACTIVE``) for comparison. By default a shortened workload (ESD 20 steps, ``asr`` on 2
prompts) keeps one run near a minute; ``--full`` runs the whole default benchmark. The table's ratio is default /
``num_threads=1`` (medians): at most about 1.2 means the default does not collapse when the cores are shared.
Whole-process wall-clock times; the load average at the start of each condition says how busy the machine was.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

SHORT = ["technique.config.train_steps=20", "metric=asr", "metric.config.limit=2"]


def burn() -> None:
    while True:
        pass


def run_once(overrides: list[str], env_extra: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    env.update(HF_HUB_OFFLINE="1", **env_extra)
    with tempfile.TemporaryDirectory(prefix="eval_learn_bench_") as tmp:
        args = [*overrides, "image_cache=off", f"cache_dir={tmp}/cache", f"output_dir={tmp}/out"]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "eval_learn", *args], env=env, capture_output=True, text=True,
                              cwd=tmp)  # fmt: skip
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(args)}):\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting per condition (median quoted)")
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1, help="busy processes in the loaded condition")
    parser.add_argument("--full", action="store_true", help="the whole default benchmark, not the shortened one")
    parser.add_argument("--spinning", action="store_true", help="also time the old default (OMP_WAIT_POLICY=ACTIVE)")
    parser.add_argument("--conditions", default="as found,loaded", help="comma-separated: 'as found', 'loaded'")
    args = parser.parse_args()
    workload = [] if args.full else SHORT
    settings = {"default": (workload, {}), "num_threads=1": ([*workload, "num_threads=1"], {})}
    if args.spinning:
        settings["spinning (old default)"] = (workload, {"OMP_WAIT_POLICY": "ACTIVE"})
    print(f"{os.cpu_count()} cores; workload: python -m eval_learn {' '.join(workload) or '(the default run)'}")
    header = ["condition", "load avg (1 min) at start", *[f"{name} s" for name in settings], "default / num_threads=1"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for condition in [c.strip() for c in args.conditions.split(",")]:
        burners = [
            multiprocessing.Process(target=burn, daemon=True) for _ in range(args.load if condition == "loaded" else 0)
        ]
        for process in burners:
            process.start()
        try:
            load = os.getloadavg()[0]
            times: dict[str, list[float]] = {name: [] for name in settings}
            for _ in range(args.repeats):  # interleaved, so that a change in the machine's load hits every setting
                for name, (overrides, env) in settings.items():
                    times[name].append(run_once(overrides, env))
                    print(f"  {condition}, {name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
        finally:
            for process in burners:
                process.terminate()
        medians = {name: statistics.median(values) for name, values in times.items()}
        cells = [condition, f"{load:.1f}", *[f"{m:.1f}" for m in medians.values()],
                 f"{medians['default'] / medians['num_threads=1']:.2f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
