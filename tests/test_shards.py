"""A run split into shard jobs merges into exactly the value of the unsplit run."""

from __future__ import annotations

import json

import pytest

from eval_learn.errors import ConfigError
from eval_learn.runners import MultiBenchmarkRunner, SingleBenchmarkRunner
from eval_learn.shards import merge


@pytest.mark.slow
def test_tiny_shards_rendered_apart_merge_to_the_unsplit_value(tmp_path) -> None:
    def run(folder, cache, **settings):
        return SingleBenchmarkRunner("free_run", "asr", {}, {"limit": 7}, folder, model="tiny", batch_size=2,
                                     cache_dir=cache, **settings).run()  # fmt: skip

    whole = run(tmp_path / "whole", tmp_path / "cache_whole")
    for index in range(3):  # each job its own cache: nothing is shared with the whole run
        part = run(tmp_path / "shards", tmp_path / f"cache_{index}", shard={"index": index, "count": 3})
        assert part["shard"] == {"index": index, "count": 3}
        assert part["dataset_metadata"]["shard_images"] == len(range(index, 7, 3))
    (merged,) = merge([tmp_path / "shards"], tmp_path / "merged")
    assert merged["metric_result"] == whole["metric_result"]
    assert merged["metric_state"] == whole["metric_state"]
    assert merged["dataset_metadata"]["total_loaded"] == 7 and len(merged["merged_from"]) == 3
    on_disk = json.loads(next((tmp_path / "merged").glob("*/report.json")).read_text())
    assert on_disk["metric_result"] == whole["metric_result"]
    images = json.loads(next((tmp_path / "merged").glob("*/metadata.json")).read_text())["images"]
    assert [e["index"] for e in images] == list(range(7))


def test_a_missing_shard_is_named(tmp_path, cache_dir) -> None:
    for index in (0, 2):
        SingleBenchmarkRunner("free_run", "asr", {}, {"limit": 3}, tmp_path / "shards", model="tiny",
                              cache_dir=cache_dir, shard={"index": index, "count": 3}).run()  # fmt: skip
    with pytest.raises(ConfigError, match=r"shards \[1\] of 3 are missing"):
        merge([tmp_path / "shards"], tmp_path / "merged")
    with pytest.raises(ConfigError, match="shard.index must be in"):
        SingleBenchmarkRunner("free_run", "asr", {}, {}, tmp_path, model="tiny", shard={"index": 3, "count": 3})


@pytest.mark.slow
def test_miniworld_multi_run_shards_merge_to_the_unsplit_values(tmp_path, cache_dir) -> None:
    def run(**settings):
        return MultiBenchmarkRunner("free_run", ["asr", "ua_ira"], {}, {"asr": {"limit": 4}, "ua_ira": {"limit": 6}},
                                    tmp_path / ("shards" if settings else "whole"), model="miniworld",
                                    cache_dir=cache_dir, **settings).run()  # fmt: skip

    whole = run()
    for index in range(2):
        run(shard={"index": index, "count": 2})
    merged = {r["metric_name"]: r for r in merge([tmp_path / "shards"], tmp_path / "merged")}
    assert set(merged) == {"asr", "ua_ira"}
    for name in ("asr", "ua_ira"):
        assert merged[name]["metric_result"] == whole["metric_results"][name]


@pytest.mark.slow
def test_merge_from_the_command_line(tmp_path, cache_dir) -> None:
    from conftest import run_cli

    for index in range(2):
        SingleBenchmarkRunner("free_run", "asr", {}, {"limit": 2}, tmp_path / "shards", model="tiny",
                              cache_dir=cache_dir, shard={"index": index, "count": 2}).run()  # fmt: skip
    proc = run_cli("merge", str(tmp_path / "shards"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "asr_demo = 0.0 (merged 2 shards)" in proc.stdout
    (report,) = (tmp_path / "shards" / "merged").glob("*/report.json")
    assert report.stat().st_mode & 0o044  # readable by the group and others (a shared cluster)
    bad = run_cli("merge", str(tmp_path / "nothing"), cwd=tmp_path)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
