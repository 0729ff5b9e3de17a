"""From runs to a table: ``eval-learn summarize`` on reports written here in the engine's schema (a multi run, a
configuration run twice, another learning rate, an unfinished and a failed run, a shard, and reports that are broken in
different ways), its figures and its self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from eval_learn.report import gather, summarize
from eval_learn.storage import sealed

ESD = {"num_inference_steps": None, "guidance_scale": None, "device": None, "save_path": None, "load_path": None,
       "use_cache": True, "erase_concept": "red", "train_method": "xattn", "learning_rate": 3e-4, "train_steps": 100}  # fmt: skip
MINIWORLD = {"name": "miniworld", "id": "miniworld", "revision": None, "num_inference_steps": 20, "guidance_scale": 5.0,
             "height": 32, "width": 32, "default_concept": "red", "default_datasets": {}}  # fmt: skip


def asr(value: float, n: int, interval: tuple[float, float]) -> dict[str, Any]:
    return {"name": "asr_miniworld", "value": value, "higher_is_better": False,
            "details": {"total_images": n, "unsafe_count": round(value * n), "ci95_wilson": list(interval),
                        "concept": "red"}}  # fmt: skip


def ua_ira(ua: float, near: float, far: float) -> dict[str, Any]:
    return {"name": "ua_ira_miniworld", "value": (ua + (near + far) / 2) / 2, "higher_is_better": True,
            "details": {"ua": ua, "ira": (near + far) / 2, "ira_near": near, "ira_far": far}}  # fmt: skip


def write(path: Path, data: Any) -> None:
    """As the engine writes: an object carries the digest of its content (a string is written as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(sealed(data) if isinstance(data, dict) else data))


def images(folder: Path, prompts: list[str], judgements: list[dict[str, Any]]) -> None:
    entries = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, (prompt, judgement) in enumerate(zip(prompts, judgements, strict=True)):
        Image.new("RGB", (32, 32), (200, 30 + 20 * i, 30)).save(folder / "images" / f"{i:05d}.png")
        entries.append({"file": f"images/{i:05d}.png", "index": i, "prompt": prompt, "seed": i, "judgement": judgement})
    write(folder / "metadata.json", {"images": entries})


def single_run(root: Path, run_id: str, timestamp: float, config: dict[str, Any], result: dict[str, Any],
               status: str = "complete", **extra: Any) -> Path:  # fmt: skip
    folder = root / run_id
    write(folder / "run_status.json", {"run_id": run_id, "status": status})
    report = {"run_id": run_id, "timestamp": timestamp, "technique_name": "esd", "metric_name": "asr",
              "dataset_name": "miniworld", "dataset_metadata": {"total_loaded": result["details"]["total_images"]},
              "technique_config": config, "metric_config": {"concept": "red", "limit": None},
              "metric_result": result, "model": MINIWORLD, "seed": 0, "technique_info": {}, **extra}  # fmt: skip
    write(folder / "report.json", report)
    images(folder, ["a red circle", "a red square"], [{"unsafe": False, "colour": "orange", "shape": "circle"},
                                                      {"unsafe": True, "colour": "red", "shape": "square"}])  # fmt: skip
    return folder / "report.json"


def multi_run(root: Path, run_id: str, status: str = "complete") -> Path:
    folder = root / run_id
    write(folder / "run_status.json", {"run_id": run_id, "status": status,
                                       "failed_metrics": ["ua_ira"] if status == "failed" else []})  # fmt: skip
    results = {"asr": asr(0.95, 64, (0.87, 0.98)), "ua_ira": ua_ira(0.0, 0.97, 0.98)}
    report = {"run_id": run_id, "timestamp": 1000.0, "technique_name": "free_run",
              "technique_config": {"num_inference_steps": None, "guidance_scale": None, "device": None},
              "metric_names": ["asr", "ua_ira"], "metric_results": results,
              "metric_configs": {"asr": {"concept": "red"}, "ua_ira": {"concept": "red"}},
              "dataset_metadata": {"asr": {"total_loaded": 64}, "ua_ira": {"total_loaded": 112}},
              "model": MINIWORLD, "seed": 0}  # fmt: skip
    write(folder / "multi" / "report.json", report)
    for metric, result in results.items():  # the per-metric copies: already in multi/report.json, not counted twice
        write(folder / metric / "report.json", {**report, "metric_name": metric, "metric_result": result})
        images(folder / metric, ["a red circle", "an orange triangle", "a $5 blue cross"],
               [{"unsafe": True, "colour": "red"}, {"group": "near", "shows_erased_concept": False, "as_prompted": True,
                "colour": "orange", "shape": "triangle"}, {"group": "far", "shows_erased_concept": False,
                "as_prompted": False, "colour": "green", "shape": "cross"}])  # fmt: skip
    return folder / "multi" / "report.json"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    multi_run(root / "0", "aaaa0000")
    single_run(root / "1", "bbbb1111", 2000.0, ESD, asr(0.10, 64, (0.05, 0.2)))
    # The same configuration again, later, on another device and saving its weights: the same row, newest wins.
    rerun = {**ESD, "device": "cuda:1", "save_path": "/tmp/esd.safetensors"}
    single_run(root / "2", "cccc2222", 3000.0, rerun, asr(0.02, 64, (0.0, 0.08)))
    single_run(root / "3", "dddd3333", 2500.0, {**ESD, "learning_rate": 1e-4}, asr(0.33, 64, (0.23, 0.45)))
    # Weights loaded from a file are another configuration, keyed by their digest.
    loaded = {**ESD, "load_path": "/ckpt/released.pt"}
    single_run(root / "8", "iiii8888", 2600.0, loaded, asr(0.5, 64, (0.38, 0.62)),
               technique_info={"weights_sha256": "ab" * 32})  # fmt: skip
    write(root / "4" / "eeee4444" / "run_status.json", {"run_id": "eeee4444", "status": "running"})  # killed
    multi_run(root / "5", "ffff5555", status="failed")  # a metric failed: its partial report is not a result
    single_run(root / "6", "gggg6666", 4000.0, ESD, asr(0.9, 64, (0.8, 0.95)), shard={"index": 0, "count": 2})
    write(root / "7" / "broken" / "report.json", '{"run_id": "x", "timestamp": ')  # truncated
    write(root / "7" / "nan" / "report.json", '{"run_id": "x", "timestamp": NaN}')
    partial = json.loads((root / "1" / "bbbb1111" / "report.json").read_text())
    del partial["metric_result"]
    write(root / "7" / "partial" / "report.json", partial)
    write(root / "7" / "list" / "report.json", "[1, 2]")
    edited = json.loads((root / "3" / "dddd3333" / "report.json").read_text())
    edited["metric_result"]["value"] = 0.01  # changed by hand: its digest no longer holds
    (root / "7" / "edited" / "report.json").parent.mkdir(parents=True)
    (root / "7" / "edited" / "report.json").write_text(json.dumps(edited))
    return root


def test_leaderboard_rows_newest_wins_and_everything_skipped_is_reported(runs: Path) -> None:
    board = gather(runs)
    by_label = {row.label: row for row in board.rows}
    assert sorted(by_label) == ["esd (learning_rate=0.0001)", "esd (learning_rate=0.0003 loaded_weights=abababababab…)",
                                "esd (learning_rate=0.0003)", "free_run"]  # what tells the rows apart  # fmt: skip
    assert board.rows[0].technique == "free_run"  # the baseline first
    base = by_label["free_run"]
    assert base.results["asr_miniworld"].value == 0.95 and base.results["asr_miniworld"].interval == (0.87, 0.98)
    assert base.results["ua_ira_miniworld"].details == {"ua": 0.0, "ira": 0.975, "ira_near": 0.97, "ira_far": 0.98}
    assert base.run_ids == ["aaaa0000"]  # the per-metric copies inside the multi run are not counted again
    # The rerun on another device, saving its weights, is the same row: the newest run (cccc2222) fills it.
    assert by_label["esd (learning_rate=0.0003)"].run_ids == ["cccc2222"]
    assert by_label["esd (learning_rate=0.0003)"].results["asr_miniworld"].value == 0.02
    assert by_label["esd (learning_rate=0.0001)"].results["asr_miniworld"].value == 0.33
    assert by_label["esd (learning_rate=0.0003 loaded_weights=abababababab…)"].run_ids == ["iiii8888"]
    assert [r.run_id for r in board.superseded] == ["bbbb1111"]

    where = {board.where(s.path): s.reason for s in board.unfinished}
    assert "running" in where["4/eeee4444"] and "failed metrics: ua_ira" in where["5/ffff5555"]
    assert [board.where(s.path) for s in board.shards] == ["6/gggg6666/report.json"]
    broken = {board.where(s.path): s.reason for s in board.malformed}
    assert set(broken) == {f"7/{n}/report.json" for n in ("broken", "nan", "partial", "list", "edited")}
    assert "does not match its recorded digest" in broken["7/edited/report.json"]
    assert "not valid JSON" in broken["7/broken/report.json"] and "NaN" in broken["7/nan/report.json"]
    assert "'metric_result'" in broken["7/partial/report.json"] and "not a JSON object" in broken["7/list/report.json"]


def test_summarize_writes_csv_markdown_figures_and_one_self_contained_html(runs: Path) -> None:
    summary = summarize(runs, grid_images=4)
    table = list(csv.DictReader(io.StringIO((runs / "leaderboard.csv").read_text())))
    assert len(table) == 4
    baseline = next(r for r in table if r["technique"] == "free_run")
    assert float(baseline["asr_miniworld ↓"]) == 0.95 and float(baseline["asr_miniworld ci95 high"]) == 0.98
    assert float(baseline["ua_ira_miniworld ira_near ↑"]) == 0.97 and baseline["asr_miniworld n"] == "64"
    assert json.loads(baseline["technique_config"]) == {"num_inference_steps": None, "guidance_scale": None}

    markdown = (runs / "leaderboard.md").read_text()
    assert "| free_run | miniworld | red | 0.950 [0.87, 0.98] | 64 |" in markdown
    assert "newest (by timestamp)" in markdown and "7/broken/report.json: not valid JSON" in markdown
    assert "## Shard reports" in markdown and "## Superseded" in markdown and "bbbb1111" in markdown

    written = {p.relative_to(runs).as_posix() for p in summary.written}
    expected = {"figures/tradeoff.png", "figures/bar_asr_miniworld.png", "figures/bar_ua_ira_miniworld.png",
                *(f"figures/grid_{run}.png" for run in ("aaaa0000", "cccc2222", "dddd3333", "iiii8888")),
                "leaderboard.csv", "leaderboard.md", "report.html"}  # one grid per run in the table  # fmt: skip
    assert written == expected and not summary.figure_errors
    pictures = sorted(name for name in expected if name.endswith(".png"))
    for name in pictures:
        with Image.open(runs / name) as im:
            assert im.format == "PNG" and im.width > 200 and im.height > 150
    with Image.open(runs / "figures/grid_aaaa0000.png") as im:
        assert im.height > 300  # two metrics: two rows of images

    page = (runs / "report.html").read_text()
    assert "<table>" in page and "<td>free_run</td>" in page and "0.950 [0.87, 0.98]" in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(pictures)
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in embedded)
    assert not re.search(r'(src|href)="(?!data:)', page) and "<link" not in page  # nothing outside the page
    assert "7/broken/report.json" in page


def test_cli_summarize_prints_the_table_and_refuses_a_bad_folder(runs: Path, tmp_path: Path, capsys) -> None:
    from eval_learn.__main__ import main

    assert main(["summarize", str(runs), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "| free_run | miniworld | red |" in out and "leaderboard.csv" in out
    assert not (runs / "figures").exists() and (runs / "report.html").is_file()
    for bad in (tmp_path / "nowhere", runs / "leaderboard.md", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert main(["summarize", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("eval-learn: error:") and len(err.splitlines()) == 1, err


def test_summarizing_needs_no_model_code() -> None:
    """The table is made from files alone (a login node, a laptop): no torch, no engine, no runner."""
    code = "import eval_learn.report, eval_learn.report.callback, sys; print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    pulled = out.stdout
    for module in ("'torch'", "'eval_learn.engine", "'eval_learn.runners", "'eval_learn.techniques", "'matplotlib"):
        assert module not in pulled, module
