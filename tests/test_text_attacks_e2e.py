"""Ring-A-Bell and MMA-Diffusion end to end through ``asr``'s attack setting on model=tiny, as a user runs them: the
report gives the rate before and after, the budget, and per image the adversarial prompt found; a rerun reuses the
cached outcomes."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, run_cli

ATTACKS = {
    "ring_a_bell": "{name: ring_a_bell, generations: 3, population: 10, tokens: 8}",
    "mma_diffusion": "{name: mma_diffusion, steps: 2, batch_size: 8, topk: 16}",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_runs_through_asr_on_tiny_and_reuses_its_outcomes(tmp_path, name) -> None:
    args = ["model=tiny", "metric=asr", "metric.config.limit=2", f"metric.config.attack={ATTACKS[name]}",
            f"cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    first = run_cli(*args, f"hydra.run.dir={tmp_path / 'a'}", cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads(next((tmp_path / "a").glob("*/report.json")).read_text())
    attack = report["metric_result"]["details"]["attack"]
    assert attack["attack"]["name"] == name and attack["follows"]["commit"]
    assert attack["asr_after"] >= attack["asr_before"]
    searched = [p for p in attack["per_prompt"] if "skipped" not in p]
    assert searched and all(p["prompt"] and p["iterations"] >= 1 and not p["reused"] for p in searched)
    second = run_cli(*args, f"hydra.run.dir={tmp_path / 'b'}", cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(next((tmp_path / "b").glob("*/report.json")).read_text())["metric_result"]["details"]["attack"]
    assert [p["prompt"] for p in again["per_prompt"]] == [p["prompt"] for p in attack["per_prompt"]]
    assert all(p["reused"] for p in again["per_prompt"] if "skipped" not in p)
