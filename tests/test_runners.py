"""End to end on the tiny model with the real NudeNet: files, schemas, run id, determinism, multi runs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import FAST_ESD

from eval_learn.run_id import make_run_id
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner

REPORT_KEYS = {
    "run_id",
    "timestamp",
    "technique_name",
    "metric_name",
    "dataset_name",
    "dataset_metadata",
    "technique_config",
    "metric_config",
    "metric_result",
    "judge",
    "model",
    "seed",
    "batch_size",
    "device",
    "dtype",
    "generation",
    "technique_info",
    "technique_recipe",
    "timings",
    "peak_memory",
    "environment",
    "cache_stats",
    "run_settings",
}


def run_single(
    out: Path, cache: Path, batch_size: int = 4, technique: str = "free_run", settings: dict | None = None,
    **technique_config,
):  # fmt: skip
    runner = SingleBenchmarkRunner(
        technique,
        "asr",
        technique_config,
        {"limit": 5},
        output_dir=out,
        seed=3,
        model="tiny",
        batch_size=batch_size,
        cache_dir=cache,
        **(settings or {}),
    )
    return runner, runner.run()


def images(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "images").glob("*.png"))}


@pytest.mark.slow
def test_single_run_writes_report_metadata_and_images(tmp_path, cache_dir) -> None:
    runner, report = run_single(tmp_path, cache_dir, technique="esd", **FAST_ESD)
    folder = tmp_path / report["run_id"]
    assert json.loads((folder / "report.json").read_text()) == json.loads(json.dumps(report))
    assert REPORT_KEYS <= set(report)
    assert report["technique_name"] == "esd" and report["metric_name"] == "asr"
    assert report["dataset_name"] == "demo" and report["dataset_metadata"]["total_loaded"] == 5
    # Resolved configs: defaults filled in.
    assert report["technique_config"]["train_method"] == "noxattn"
    assert report["technique_config"]["train_steps"] == 3
    assert report["metric_config"]["judge"]["preset"] == "sexual_exposed" and report["metric_config"]["limit"] == 5
    result = report["metric_result"]
    assert result["name"] == "asr_demo" and 0.0 <= result["value"] <= 1.0
    assert result["details"]["total_images"] == 5
    assert report["judge"]["judge"] == "nudenet" and report["judge"]["threshold"] == 0.6
    assert report["technique_info"]["trained"] is True
    assert report["technique_recipe"]["option"] == "esd" and report["technique_recipe"]["follows"]["file"]
    assert set(report["timings"]) >= {
        "metric_setup_s",
        "dataset_load_s",
        "technique_prepare_s",
        "generation_s",
        "metric_update_s",
        "metric_compute_s",
        "evaluate_s",
        "total_s",
    }
    assert report["cache_stats"] == {"images_generated": 5, "images_reused": 0, "judgements_reused": 0}
    assert report["metric_result"]["higher_is_better"] is False
    assert report["generation"]["mode"] == "fixed_shape" and report["generation"]["rows_per_call"] == 4
    assert json.loads((folder / "run_status.json").read_text())["status"] == "complete"
    assert (folder / "state" / "state.json").is_file()
    assert report["environment"]["versions"]["nudenet"]
    assert report["run_id"] == make_run_id(
        "esd", asdict(runner.technique_config), "asr", asdict(runner.metric.config), "demo", report["timestamp"]
    )
    metadata = json.loads((folder / "metadata.json").read_text())
    assert len(metadata["images"]) == 5 == len(images(folder))
    entry = metadata["images"][0]
    assert set(entry) >= {"file", "prompt", "seed", "guidance_scale", "judgement"}
    assert (folder / entry["file"]).is_file()
    assert entry["seed"] == 1001 and entry["guidance_scale"] == 7.0  # the bundled file's own seed and scale
    assert set(entry["judgement"]) == {"unsafe", "detections", "prompt_id"}  # prompt_id: the interval's cluster
    assert len(entry["pixels_sha256"]) == 64


@pytest.mark.slow
def test_a_rerun_renders_the_same_images_with_or_without_the_store(tmp_path, cache_dir) -> None:
    _, a = run_single(tmp_path / "a", cache_dir)
    _, b = run_single(tmp_path / "b", cache_dir)  # from the store
    _, c = run_single(tmp_path / "c", cache_dir, settings={"image_cache": "off"})  # rendered again
    first = images(tmp_path / "a" / a["run_id"])
    assert len(first) == 5
    assert first == images(tmp_path / "b" / b["run_id"]) == images(tmp_path / "c" / c["run_id"])
    assert a["metric_result"] == b["metric_result"] == c["metric_result"]
    assert b["cache_stats"] == {"images_generated": 0, "images_reused": 5, "judgements_reused": 5}
    assert c["cache_stats"] == {"images_generated": 5, "images_reused": 0, "judgements_reused": 0}
    assert a["run_id"] != b["run_id"]  # the timestamp is part of the id: reruns never collide


@pytest.mark.slow
def test_strict_mode_gives_identical_images_for_any_batch_size(tmp_path, cache_dir) -> None:
    strict = {"batch_invariant": True, "image_cache": "off"}
    _, a = run_single(tmp_path / "a", cache_dir, batch_size=4, settings=strict)
    _, b = run_single(tmp_path / "b", cache_dir, batch_size=1, settings=strict)
    assert images(tmp_path / "a" / a["run_id"]) == images(tmp_path / "b" / b["run_id"])
    assert a["generation"]["mode"] == "strict" and a["generation"]["batch_invariant"] is True


@pytest.mark.slow
def test_multi_runner_layout_and_combined_report(tmp_path, cache_dir) -> None:
    runner = MultiBenchmarkRunner(
        "esd", ["asr"], FAST_ESD, {"asr": {"limit": 3}}, output_dir=tmp_path, model="tiny", cache_dir=cache_dir
    )
    combined = runner.run()
    root = tmp_path / combined["run_id"]
    assert (root / "asr" / "report.json").is_file() and (root / "asr" / "metadata.json").is_file()
    assert len(list((root / "asr" / "images").glob("*.png"))) == 3
    on_disk = json.loads((root / "multi" / "report.json").read_text())
    assert on_disk["metric_names"] == ["asr"]
    assert on_disk["metric_results"]["asr"]["name"] == "asr_demo"
    assert on_disk["metric_configs"]["asr"]["limit"] == 3
    per_metric = json.loads((root / "asr" / "report.json").read_text())
    assert per_metric["metric_result"] == on_disk["metric_results"]["asr"]
    assert on_disk["failed_metrics"] == {} and on_disk["cache_stats"]["images_generated"] == 3


def test_metric_name_alias_from_the_seed_page(tmp_path, cache_dir) -> None:
    runner = SingleBenchmarkRunner("free_run", "asr_i2p", {}, {"limit": 1}, tmp_path, model="tiny", cache_dir=cache_dir)
    assert runner.metric.name == "asr"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_reports_are_strict_json(tmp_path, bad) -> None:
    from eval_learn.storage import write_json

    write_json(tmp_path / "r.json", {"value": bad, "nested": [bad]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"value": None, "nested": [None]}
