"""``asr`` with ``attack``: the report's before/after rates and per-prompt outcomes, the after rate never below the
before rate, bad settings refused before any model loads, and a killed attack run resuming per prompt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval_learn.attacks.base import AttackOutcome
from eval_learn.configs import ConfigError
from eval_learn.metrics import attacked
from eval_learn.types import PromptRecord
from tests.conftest import ROOT, run_cli

TINY_ATTACK = "metric.config.attack={name: unlearndiffatk, timesteps: 2, iterations: 2}"


def report_of(out: Path) -> dict[str, Any]:
    return json.loads(next(out.glob("*/report.json")).read_text())


@pytest.mark.slow
def test_unlearndiffatk_runs_on_tiny_and_reports_before_and_after(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli("model=tiny", "technique=negative_prompt", "metric=asr", "metric.config.limit=2", TINY_ATTACK,
                   f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}", cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = report_of(out)["metric_result"]
    assert result["name"] == "asr_demo_unlearndiffatk"
    block = result["details"]["attack"]
    assert block["attack"]["iterations"] == 2 and block["follows"]["repo"] == "OPTML-Group/Diffusion-MU-Attack"
    assert block["asr_after"] >= block["asr_before"] and result["value"] == block["asr_after"]
    assert len(block["asr_before_ci95"]) == 2 and len(block["asr_after_ci95"]) == 2
    assert [p["index"] for p in block["per_prompt"]] == [0, 1]
    for entry in block["per_prompt"]:
        if "skipped" in entry:
            continue
        assert (
            1 <= entry["iterations"] <= 4 and entry["seconds"] > 0 and entry["prompt"].endswith(entry["plain_prompt"])
        )
        assert (next(out.glob("*/report.json")).parent / entry["image_file"]).is_file()
    assert block["attacks_searched"] + block["attacks_reused"] == block["attacked_images"]


@pytest.mark.slow
def test_bad_attack_settings_are_one_line_and_exit_2(tmp_path: Path) -> None:
    cases = {
        "metric.config.attack=unlearndifatk": "Did you mean 'unlearndiffatk'?",
        "metric.config.attack={name: unlearndiffatk, iteratons: 3}": "Did you mean 'iterations'?",
        "metric.config.attack={name: unlearndiffatk, k: 0}": "k must be >= 1",
        # Ring-A-Bell has no prompt pairs for this concept: refused before the model loads, not after
        "metric.config.attack=ring_a_bell\nmetric.config.concept=church": "give pairs_path",
    }
    for override, expected in cases.items():
        done = run_cli("model=tiny", "metric=asr", *override.split("\n"), f"hydra.run.dir={tmp_path / 'x'}", cwd=ROOT)
        assert done.returncode == 2, (override, done.stderr[-2000:])
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], done.stderr
    for alias, attack in (
        ("asr_p4d", "p4d"),
        ("asr_mma_diffusion", "mma_diffusion"),
        ("asr_ring_a_bell", "ring_a_bell"),
    ):
        done = run_cli("model=tiny", f"metric={alias}", "metric.config.limit=1", "+metric.config.attack.time_limit_s=1",
                       f"hydra.run.dir={tmp_path / alias}", f"cache_dir={tmp_path / 'c'}", cwd=ROOT)  # fmt: skip
        if done.returncode == 2:  # the attack is not registered in this version: one clear line
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and f"Unknown attack '{attack}'" in lines[0], done.stderr
        else:
            assert done.returncode == 0, done.stderr[-2000:]
            assert report_of(tmp_path / alias)["metric_config"]["attack"]["name"] == attack
    assert not (tmp_path / "x").exists()  # nothing written


class FakeSession:
    def __init__(self, successes: dict[int, bool]) -> None:
        self.successes = successes

    def outcome(self, record: PromptRecord) -> tuple[AttackOutcome, bool]:
        return AttackOutcome(f"adv {record.prompt}", self.successes[record.index], 3, 0.5, 3 if
                             self.successes[record.index] else None), False  # fmt: skip

    def files(self, record: PromptRecord, outcome: AttackOutcome) -> dict[str, Any]:
        return {"image_file": None, "embedding_file": None}

    def stats(self) -> dict[str, Any]:
        return {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(1, 3)), min_size=1, max_size=12))
def test_the_asr_after_attack_is_never_below_the_asr_before(rows: list[tuple[bool, bool, int]]) -> None:
    records, entries, successes = [], [], {}
    index = 0
    for prompt_id, (plain, attack_wins, samples) in enumerate(rows):
        for sample in range(samples):
            records.append(PromptRecord(index, f"prompt {prompt_id}", 100 + index, extra={"sample": sample}))
            entries.append({"unsafe": plain if sample == 0 else not plain, "prompt_id": index - sample})
            successes[index] = attack_wins
            index += 1
    session = FakeSession(successes)
    attacked.attack_entries(session, records, entries)
    block = attacked.attack_details({"name": "unlearndiffatk"}, entries, session)
    assert block["asr_after"] >= block["asr_before"]
    assert block["asr_after_ci95"][0] >= block["asr_before_ci95"][0] - 1e-12
    expected = sum(e["unsafe"] or successes[r.index] for r, e in zip(records, entries, strict=True)) / len(entries)
    assert abs(block["asr_after"] - expected) < 1e-12
    # a flagged plain image is never attacked
    assert all("skipped" in e["attack"] for e in entries if e["unsafe"])


@pytest.mark.slow
def test_a_killed_attack_run_resumes_without_redoing_finished_prompts(tmp_path: Path) -> None:
    cache, args = tmp_path / "cache", ["model=tiny", "technique=negative_prompt", "metric=asr",
                                       "metric.config.limit=3", TINY_ATTACK]  # fmt: skip
    outcomes = cache / "attacks" / "unlearndiffatk"
    first = subprocess.Popen([sys.executable, "-m", "eval_learn", *args, f"cache_dir={cache}",
                              f"hydra.run.dir={tmp_path / 'killed'}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=os.environ.copy())  # fmt: skip
    deadline = time.monotonic() + 600
    while not list(outcomes.rglob("*.json")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished = len(list(outcomes.rglob("*.json")))
    assert 1 <= finished < 3, f"{finished} prompts were attacked before the kill"
    out = tmp_path / "rerun"
    done = run_cli(*args, f"cache_dir={cache}", f"hydra.run.dir={out}", cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    block = report_of(out)["metric_result"]["details"]["attack"]
    attacked_now = block["attacked_images"]
    assert block["attacks_reused"] == finished
    assert block["attacks_searched"] == attacked_now - finished
    # and a second rerun searches nothing
    again = run_cli(*args, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'again'}", cwd=ROOT)
    assert again.returncode == 0
    block = report_of(tmp_path / "again")["metric_result"]["details"]["attack"]
    assert (block["attacks_searched"], block["attacks_reused"]) == (0, attacked_now)


@pytest.mark.slow
def test_on_the_miniworld_unlearndiffatk_raises_slds_asr_by_at_least_0_2(tmp_path: Path) -> None:
    """Measured (docs/attacks.md): SLD's MiniWorld preset erases red from sampling only; prefix tokens found on its
    UNet bring red back for several of the 8 red prompts."""
    out = tmp_path / "out"
    done = run_cli("model=miniworld", "technique=sld", "metric=asr", "metric.config.limit=8",
                   "metric.config.samples_per_prompt=1", "batch_size=1",
                   "metric.config.attack={name: unlearndiffatk, timesteps: 5, iterations: 10}",  # no time limit: load-free
                   f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}", cwd=ROOT, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    block = report_of(out)["metric_result"]["details"]["attack"]
    assert block["asr_after"] - block["asr_before"] >= 0.2, block
    assert all(p["prompt"].split()[-2:] == p["plain_prompt"].split()[-2:] for p in block["per_prompt"] if "prompt" in p)


def test_an_attack_that_cannot_search_for_the_concept_is_refused_before_any_model_loads() -> None:
    with pytest.raises(ConfigError, match="ring_a_bell.*pairs_path"):
        attacked.resolve_attack("ring_a_bell", "violence")
    assert attacked.resolve_attack("ring_a_bell", "nudity")["name"] == "ring_a_bell"
    assert attacked.resolve_attack("unlearndiffatk", "violence")["name"] == "unlearndiffatk"  # any concept
