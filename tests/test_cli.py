"""The Hydra app as a user runs it: overrides, multirun, several metrics, config files, reproducing a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from eval_learn.errors import ConfigError


def reports(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/report.json"))


def image_bytes(report: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((report.parent / "images").glob("*.png"))}


@pytest.fixture
def finished_run(tmp_path) -> Path:
    out = tmp_path / "run"
    proc = run_cli(
        "model=tiny", "technique=esd", "metric=asr", "metric.config.limit=2", f"hydra.run.dir={out}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
    assert (saved["device"], saved["dtype"]) == ("cpu", "float32")  # what was used, not "auto"
    return out


@pytest.mark.slow
def test_single_run_and_reproducing_it_from_the_saved_config(finished_run, tmp_path) -> None:
    (report,) = reports(finished_run)
    first = json.loads(report.read_text())
    assert first["technique_name"] == "esd" and first["technique_config"]["train_steps"] == 20  # tiny preset
    saved = finished_run / ".hydra" / "config.yaml"
    again = tmp_path / "again"
    proc = run_cli(str(saved), f"hydra.run.dir={again}", "image_cache=off", cwd=tmp_path)  # rendered again
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report2,) = reports(again)
    second = json.loads(report2.read_text())
    assert second["technique_config"] == first["technique_config"]
    assert second["metric_result"]["value"] == first["metric_result"]["value"]
    assert image_bytes(report2) == image_bytes(report) and len(image_bytes(report)) == 2
    assert second["technique_info"]["trained"] is False  # the ESD weights came from the cache
    assert second["cache_stats"]["images_generated"] == 2
    assert "asr_demo = 0.000 (lower is better)" in proc.stdout and "report: " in proc.stdout  # the summary


@pytest.mark.slow
def test_multirun_puts_every_job_in_its_own_folder(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "model=tiny",
        "technique=free_run,esd",
        "metric=asr",
        "metric.config.limit=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    techniques = {}
    for job in ("0", "1"):
        (report,) = reports(sweep / job)
        techniques[job] = json.loads(report.read_text())["technique_name"]
    assert techniques == {"0": "free_run", "1": "esd"}


@pytest.mark.slow
def test_one_technique_against_several_metrics_from_the_command_line(tmp_path) -> None:
    out = tmp_path / "multi"
    proc = run_cli(
        "technique=free_run",
        "metrics=[asr,ua_ira]",
        "metrics.asr.config.limit=2",
        "metrics.ua_ira.config.limit=3",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (combined,) = sorted(out.glob("*/multi/report.json"))
    assert json.loads(combined.read_text())["metric_names"] == ["asr", "ua_ira"]
    for metric in ("asr", "ua_ira"):
        assert (combined.parent.parent / metric / "report.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_seed_page_config_file_runs_as_is(tmp_path, suffix) -> None:
    config = {
        "technique": {
            "name": "esd",
            "config": {
                "erase_concept": "nudity",
                "train_method": "noxattn",
                "train_steps": 2,
                "sample_steps": 3,
                "save_path": "checkpoints/esd_nudity.safetensors",
            },
        },
        "metric": {"name": "asr_i2p", "config": {"device": "cpu", "limit": 1}},
        "output_dir": "results/esd_asr",
        "model": "tiny",
    }
    path = tmp_path / f"esd_asr{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(config))
    else:
        import yaml

        path.write_text(yaml.safe_dump(config))
    temp = tmp_path / "temp"
    temp.mkdir()
    proc = run_cli(str(path), "metric.config.limit=1", "batch_size=2", cwd=tmp_path, env={"TMPDIR": str(temp)})
    assert proc.returncode == 0, proc.stderr[-3000:]  # plain overrides of keys the file leaves out work too
    assert not list(temp.glob("eval_learn_*"))  # the run file's temporary copy is removed
    (report,) = reports(tmp_path / "results" / "esd_asr")
    data = json.loads(report.read_text())
    assert data["metric_result"]["name"] == "asr_demo" and data["technique_config"]["train_steps"] == 2
    assert data["metric_config"]["limit"] == 1 and data["batch_size"] == 2
    assert (tmp_path / "checkpoints" / "esd_nudity.safetensors").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("technique.config.trian_method=xattn", "technique.config has no 'trian_method'. Did you mean 'train_method'?"),
        ("-m technique=free_run,esd technique.config.erase_concept=red", "technique.config has no 'erase_concept'"),
        ("batch_sise=2", "the run config has no 'batch_sise'. Did you mean 'batch_size'?"),
        ("technique=esdd", "unknown technique 'esdd'. Did you mean 'esd'?"),
        ("metric=asr,ua_iraa", "unknown metric 'ua_iraa'. Did you mean 'ua_ira'?"),
        ("metric=asr metric.config.limit=0", "limit must be a positive integer"),
        ("metric=ua_ira", "ua_ira measures MiniWorld concepts on model=miniworld"),
    ],
)
def test_bad_overrides_fail_with_a_clear_message(tmp_path, override, message) -> None:
    out = tmp_path / "x"
    proc = run_cli("model=tiny", *override.split(), f"hydra.run.dir={out}", f"hydra.sweep.dir={out}", cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr  # one message
    assert not out.exists()  # nothing was started: no empty folders


@pytest.mark.slow
def test_full_error_shows_the_traceback(tmp_path) -> None:
    import os

    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "eval_learn", "model=tiny", "metric=asr", "metric.config.limit=0"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "technique: {name: free_run}\nmetric: {name: asr}\nhydra: {callbacks: {x: {_target_: builtins.open}}}\n",
            "sets 'hydra': a run file may set the run's own keys only",
        ),
        (
            "technique: {name: free_run}\nmetric: {name: asr}\nbatch_sise: 2\n",
            "unknown key 'batch_sise'. Did you mean 'batch_size'?",
        ),
        ("- technique\n", "must hold a mapping"),
        ("technique: {name: free_run\n", "cannot be read"),
    ],
)
def test_run_files_that_cannot_run_are_refused(tmp_path, content, message) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(content)
    proc = run_cli(str(path), cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_with_a_message_and_caches_nothing(tmp_path) -> None:
    cache = tmp_path / "cache"
    proc = run_cli("model=tiny", "technique=esd", "technique.config.learning_rate=5", "metric=asr",
                   "metric.config.limit=1", f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'out'}",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "the loss became" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    assert not list(cache.rglob("*.safetensors")) and not list(cache.rglob("*.png"))
    (status,) = (tmp_path / "out").glob("*/run_status.json")
    assert json.loads(status.read_text())["status"] == "failed"


def test_key_check_passes_valid_overrides_and_hydra_settings() -> None:
    from eval_learn.cli.arguments import parse_overrides, single_metric_overrides
    from eval_learn.cli.precheck import check_override_keys

    for line in (
        "technique.config.train_method=noxattn metrics.asr.config.limit=16 seed=1",
        "-m model=tiny technique=free_run,esd metric=asr seed=0,1 hydra/launcher=basic hydra.job.chdir=false",
        "technique=esd metrics=[asr,ua_ira] metrics.ua_ira.config.retain_check=all",
        "-m metrics=[asr],[ua_ira] seed=1",  # a sweep over metric sets
        "-m preset=tiny_esd,miniworld_esd technique.config.train_steps=5",
        "+metric=asr metric.config.limit=1",
        "-cn my_config my_own_key=1",  # the user's own config: its keys are Hydra's business
        "metrics=[asr,no_such_metric] seed=1",  # a composition error: left for Hydra to report
    ):
        argv = single_metric_overrides(line.split())
        overrides = parse_overrides(argv)
        assert overrides is not None, line
        check_override_keys(argv, overrides)  # raises SystemExit on a false alarm
    argv = single_metric_overrides(["metric=asr", "metric.config.limt=3"])
    with pytest.raises(ConfigError, match="Did you mean 'limit'"):
        check_override_keys(argv, parse_overrides(argv) or [])


def test_metric_choice_replaces_the_default_metric_set() -> None:
    from eval_learn.cli.arguments import single_metric_overrides

    assert single_metric_overrides(["metric=asr"]) == ["metric=asr", "metrics=[]"]
    assert single_metric_overrides(["-m", "technique=free_run,esd", "metric=asr"])[-1] == "metrics=[]"
    assert single_metric_overrides(["metrics=[asr]"]) == ["metrics=[asr]"]
    assert single_metric_overrides(["model=tiny"]) == ["model=tiny"]
