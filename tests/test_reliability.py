"""What a hostile or unlucky user still broke (issue 19): tampered shards, read-only caches, pickles that are not
weights, names that become Markdown, paths Hydra cannot read unquoted, sweeps larger than a sample. Each test failed
before its fix."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from eval_learn.__main__ import main
from eval_learn.errors import ConfigError
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.shards import merge
from eval_learn.storage import sealed


def _shards(tmp_path: Path, count: int = 2, limit: int = 4) -> Path:
    for index in range(count):
        SingleBenchmarkRunner("free_run", "asr", {}, {"limit": limit}, tmp_path / "shards", model="tiny",
                              cache_dir=tmp_path / "cache", shard={"index": index, "count": count}).run()  # fmt: skip
    return tmp_path / "shards"


def _state_files(root: Path) -> list[Path]:
    return sorted(root.rglob("state/state.json"))


# --- 2. merge verifies shard states ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_merge_refuses_an_edited_a_thinned_and_a_foreign_shard_state(tmp_path: Path, capsys) -> None:
    root = _shards(tmp_path)
    (clean,) = merge([root], tmp_path / "clean")
    assert clean["dataset_metadata"]["total_loaded"] == 4 and clean["metric_result"]["value"] == 0.0
    path = _state_files(root)[0]
    original = path.read_text()

    edited = json.loads(original)  # one verdict flipped, digest left as written
    record = next(iter(edited["state"]["judgements"].values()))
    record["unsafe"] = True
    path.write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match="does not match its recorded digest") as err:
        merge([root], tmp_path / "out")
    assert str(path) in str(err.value)
    assert main(["merge", str(root), "--out", str(tmp_path / "out")]) == 2
    assert str(path) in capsys.readouterr().err

    thinned = json.loads(original)  # a record removed and the digest written anew: the counts disagree
    thinned["state"]["judgements"].pop(next(iter(thinned["state"]["judgements"])))
    path.write_text(json.dumps(sealed(thinned)))
    with pytest.raises(ConfigError, match="holds 1 images, its report .* says 2"):
        merge([root], tmp_path / "out")

    foreign = json.loads(original)  # an image of the other shard moved in
    judged = foreign["state"]["judgements"]
    first = next(iter(judged))
    judged[str(int(first) + 1)] = judged.pop(first)
    path.write_text(json.dumps(sealed(foreign)))
    with pytest.raises(ConfigError, match="not shard"):
        merge([root], tmp_path / "out")

    path.write_text(original)
    report = path.parent.parent / "report.json"
    data = json.loads(report.read_text())
    data["dataset_metadata"]["total_loaded"] = 5  # the report edited: its digest no longer holds
    report.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=f"{report}.*does not match its recorded digest"):
        merge([root], tmp_path / "out")


# --- 5. names from user input stay text ------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_prompt_file_name_reaches_the_leaderboard_as_text(tmp_path: Path) -> None:
    from eval_learn.report import summarize

    hostile = tmp_path / "<img src=x onerror=alert(1)> | *x*.csv"
    hostile.write_text("prompt,evaluation_seed\na red circle,1\n")
    report = SingleBenchmarkRunner("free_run", "asr", {}, {"prompts_path": str(hostile), "limit": 1},
                                   tmp_path / "runs", model="tiny", cache_dir=tmp_path / "cache").run()  # fmt: skip
    name = report["metric_result"]["name"]
    assert name == "asr_img_src_x_onerror_alert_1_x" and report["dataset_name"] in name
    summarize(tmp_path / "runs", figures=False)
    markdown = (tmp_path / "runs" / "leaderboard.md").read_text()
    html = (tmp_path / "runs" / "report.html").read_text()
    assert "<img" not in markdown and "<img src=x" not in html
    assert f"| {name} " in markdown  # the column, readable as written


def test_markdown_escapes_every_cell() -> None:
    from eval_learn.report.leaderboard import markdown_text

    assert markdown_text("a <b>|</b> [l](u) `c` *e* _f_ asr_x\nnext") == (
        "a &lt;b&gt;\\|&lt;/b&gt; [l\\](u) \\`c\\` \\*e\\* \\_f\\_ asr_x next"
    )
    assert markdown_text("0.950 [0.87, 0.98]") == "0.950 [0.87, 0.98]"  # our interval cells stay readable
    assert markdown_text("![x](javascript:alert(1))") == "![x\\](javascript:alert(1))"  # no image, no link


# --- 4. a pickle that is not weights ---------------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):  # what a malicious file does: call a function when it is unpickled
        return (print, ("this must never run",))


@pytest.mark.parametrize("suffix", [".pt", pytest.param(".bin", marks=pytest.mark.slow)])
def test_a_malicious_pickle_as_load_path_is_one_line_and_exit_2(tmp_path: Path, suffix: str) -> None:
    from conftest import run_cli

    path = tmp_path / f"weights{suffix}"
    torch.save({"unet.x": torch.zeros(1), "payload": _Payload()}, path)
    proc = run_cli("model=tiny", "technique=esd", "metric=asr", f"technique.config.load_path={path}",
                   "metric.config.limit=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "this must never run" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "UnpicklingError" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "error" in line.lower()]  # one line, on stderr
    assert str(path) in line and "not a file of weights" in line


def test_a_pickle_of_something_else_is_refused_by_path(tmp_path: Path) -> None:
    from eval_learn.techniques import weights

    path = tmp_path / "numbers.pt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(weights.DamagedWeights, match="numbers.pt"):
        weights.read(path, require_digest=False)


# --- 6. a path Hydra cannot read unquoted ----------------------------------------------------------------------------
def test_a_non_ascii_path_without_quotes_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    code = main(["model=tiny", "metric=asr", f"metric.config.prompts_path={tmp_path}/prömpts.csv"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("eval-learn: error:") and "prömpts.csv" in err[0] and "Quote" in err[0]


# --- 3. read-only caches ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _read_only(folder: Path, view: Path) -> Iterator[Path]:
    """``folder`` seen through ``view`` on a read-only filesystem (a read-only bind mount as root; permissions
    otherwise, which root would ignore)."""
    view.mkdir()
    if os.geteuid() != 0:
        view.rmdir()
        view.symlink_to(folder)
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(0o555)
        try:
            yield view
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only filesystem here: {mounted.stderr.decode().strip()}")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=False)


@pytest.mark.slow
def test_a_read_only_cache_is_read_and_never_a_traceback(tmp_path: Path, monkeypatch) -> None:
    def run(limit: int, **settings):
        return SingleBenchmarkRunner("free_run", "asr", {}, {"limit": limit}, tmp_path / "runs", model="tiny",
                                     **settings).run()  # fmt: skip

    first = run(2, cache_dir=tmp_path / "store")
    with _read_only(tmp_path / "store", tmp_path / "ro") as store:
        before = sorted(p.name for p in store.rglob("*"))
        monkeypatch.setenv("EVAL_LEARN_CACHE", str(store))
        on = run(3)  # image_cache=on, the store read-only: read what is there, render the rest, write nothing
        assert on["cache_stats"]["images_reused"] == 2 and on["cache_stats"]["images_generated"] == 1
        explicit = run(3, cache_dir=str(store), image_cache="read_only")  # as EVAL_LEARN_CACHE=DIR is accepted
        assert explicit["cache_stats"]["images_reused"] == 2
        assert sorted(p.name for p in store.rglob("*")) == before
    assert on["metric_state"]["judgements"]["0"] == first["metric_state"]["judgements"]["0"]
    with pytest.raises(ConfigError, match="is not a folder"):
        run(1, cache_dir=str(tmp_path / "missing"), image_cache="read_only")


# --- 1. every job of a large sweep is checked ------------------------------------------------------------------------
@pytest.mark.slow
def test_every_job_of_a_large_sweep_is_checked_before_the_first_starts(tmp_path: Path, capsys) -> None:
    sweep = ["-m", "model=tiny", "technique=free_run", "metric=asr", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    # 1,040 jobs; the first wrong one is job 521, beyond the 512 that were checked before
    assert main([*sweep, "batch_size=1,0", "seed=range(0,520)"]) == 2
    err = capsys.readouterr().err
    assert "batch_size=0 seed=0: run config: batch_size must be a positive integer" in err
    assert not (tmp_path / "sweep").exists()  # nothing started
    assert main([*sweep, "seed=0,1,abc"]) == 2  # a value of the wrong type: Hydra's own check, on job 3
    assert "seed" in capsys.readouterr().err.splitlines()[-1]
    assert main([*sweep, "seed=range(0,20000)"]) == 2
    assert "20,000 jobs, more than the 10,000" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_a_sweep_composed_fast_equals_hydra_composing_every_job() -> None:
    from hydra import compose

    from eval_learn.cli.arguments import SELECTIONS
    from eval_learn.cli.precheck import JobComposer
    from eval_learn.compose import hydra_session

    jobs = [["model=tiny", "technique=esd", "metric=asr", f"seed={seed}", f"technique.config.learning_rate={lr}",
             f"metric.config.limit={limit}"] for seed in (0, 7) for lr in (1e-5, 0.5) for limit in (1, 3)]  # fmt: skip
    with hydra_session():
        composer = JobComposer("config", {*SELECTIONS, "hydra"})
        for job in jobs:
            assert composer.compose(job) == OmegaConf.to_container(compose("config", overrides=job))
    assert list(composer.bases.values())[0] is not None  # the jobs after the first were set, not composed
