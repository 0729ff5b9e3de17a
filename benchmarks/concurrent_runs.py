"""Load test: N runs started together on one image store, with overlapping prompts; then the same with the store
reached through two different paths, as the hosts of a cluster reach one shared folder through their own mounts.

    python benchmarks/concurrent_runs.py                 # N = 4 and 8, model=tiny
    python benchmarks/concurrent_runs.py --runs 4 --model miniworld

Every run must exit 0, every run of the same prompts must give the same value, and each distinct image must be
rendered once over all runs together (the store's locks make the others wait and reuse it). Prints one table row per
scenario. The second path is a bind mount of the store when this process may mount (root), else a symbolic link.
Timings depend on the machine's load: say how busy it was when you quote them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def second_path(store: Path, where: Path) -> Iterator[tuple[Path, str]]:
    """``store`` reached through another path: a bind mount (another mount point of the same files), else a link."""
    where.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "--bind", str(store), str(where)],
                                            capture_output=True).returncode == 0:  # fmt: skip
        try:
            yield where, "bind mount"
        finally:
            subprocess.run(["umount", str(where)], check=False)
        return
    where.rmdir()
    where.symlink_to(store)
    yield where, "symlink"


def start(index: int, limit: int, store: Path, folder: Path, model: str) -> subprocess.Popen:
    # Runs i take the first limit + i % 3 prompts: each overlaps every other on the first `limit` prompts.
    args = [sys.executable, "-m", "eval_learn", f"model={model}", "technique=free_run", "metric=asr",
            f"metric.config.limit={limit + index % 3}", f"cache_dir={store}", "num_threads=1", "batch_size=2",
            f"hydra.run.dir={folder / f'run{index}'}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def scenario(name: str, n: int, stores: list[Path], folder: Path, limit: int, model: str) -> dict[str, object]:
    began = time.perf_counter()
    procs = [start(i, limit, stores[i % len(stores)], folder, model) for i in range(n)]
    outputs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - began
    codes = [p.returncode for p in procs]
    reports = [json.loads(next((folder / f"run{i}").rglob("report.json")).read_text()) if codes[i] == 0 else None
               for i in range(n)]  # fmt: skip
    for i, code in enumerate(codes):
        if code != 0:
            print(f"run {i} exited {code}:\n{outputs[i][-2000:]}", file=sys.stderr)
    done = [r for r in reports if r]
    by_limit: dict[int, set[str]] = {}
    for r in done:
        by_limit.setdefault(r["metric_config"]["limit"], set()).add(json.dumps(r["metric_state"], sort_keys=True))
    images = set()  # what determines an image in this benchmark (one technique, one model): prompt, seed, guidance
    for i in range(n):
        if codes[i] == 0:
            metadata = json.loads(next((folder / f"run{i}").rglob("metadata.json")).read_text())
            images |= {(e["prompt"], e["seed"], e["guidance_scale"]) for e in metadata["images"]}
    distinct = len(images)
    rendered = sum(r["cache_stats"]["images_generated"] for r in done)
    return {"scenario": name, "runs": n, "exit 0": f"{codes.count(0)}/{n}",
            "values equal": all(len(v) == 1 for v in by_limit.values()) and len(done) == n,
            "distinct images": distinct, "rendered": rendered, "reused": sum(r["cache_stats"]["images_reused"]
                                                                            for r in done),
            "wall s": round(wall, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--limit", type=int, default=4, help="prompts every run shares")
    parser.add_argument("--model", default="tiny", choices=["tiny", "miniworld"])
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="eval_learn_load_") as tmp:
        root = Path(tmp)
        for n in options.runs:
            store = root / f"store_one_{n}"
            rows.append(scenario("one store", n, [store], root / f"one_{n}", options.limit, options.model))
            shared = root / f"store_shared_{n}"
            shared.mkdir()
            with second_path(shared, root / f"mount_{n}") as (other, how):
                rows.append(scenario(f"two paths ({how})", n, [shared, other], root / f"shared_{n}", options.limit,
                                     options.model))  # fmt: skip
    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in headers) + " |")
    ok = all(r["exit 0"] == f"{r['runs']}/{r['runs']}" and r["values equal"] and r["rendered"] == r["distinct images"]
             for r in rows)  # fmt: skip
    print("every run exited 0, values equal, each image rendered once" if ok else "FAILED: see the table")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
