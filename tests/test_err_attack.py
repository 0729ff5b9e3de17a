"""``err``'s robustness arm under an attack (``metric.config.robustness.attack``): the attack resolved and checked
before any model loads, robustness after attack never above robustness before it (by construction, checked on
drawn MiniWorld images judged by the real CNN), an end-to-end run on model=tiny through the engine's attack
session, and on the MiniWorld a technique whose robustness falls under attack."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from eval_learn.attacks.base import AttackOutcome
from eval_learn.configs import from_mapping
from eval_learn.errors import ConfigError
from eval_learn.metrics.err import ERR, ERRConfig, harmonic_mean
from eval_learn.miniworld.world import Scene, render
from eval_learn.models import resolve_model
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.types import PromptRecord

TINY_BUDGET = {"name": "unlearndiffatk", "timesteps": 1, "iterations": 1}


def context(model: str = "miniworld") -> RunContext:
    return RunContext(resolve_model(model), "cpu", torch.float32, 0, None)


def resolved(model: str = "miniworld", **config: Any) -> ERRConfig:
    return ERR.resolve_config(from_mapping(ERRConfig, config, "err"), context(model), ["red"] if model == "miniworld"
                              else None)  # fmt: skip


def test_the_attack_is_resolved_from_the_config_or_the_protocol() -> None:
    plain = resolved()
    assert plain.robustness.attack is None  # err_miniworld names no attack
    named = resolved(robustness={"attack": "unlearndiffatk"})
    assert named.robustness.attack["name"] == "unlearndiffatk" and named.robustness.attack["iterations"] == 40
    protocol = resolved(protocol="err_miniworld_attack")
    assert protocol.protocol == "err_miniworld_attack"
    assert (protocol.robustness.attack["timesteps"], protocol.robustness.attack["iterations"]) == (5, 10)
    assert (
        protocol.robustness.prompts[0]["name"] == "miniworld_variants" and protocol.robustness.samples_per_prompt == 1
    )
    changed = resolved(protocol="err_miniworld_attack", robustness={"attack": {"name": "auto", "iterations": 3}})
    assert (changed.robustness.attack["timesteps"], changed.robustness.attack["iterations"]) == (5, 3)
    assert resolved(protocol="err_miniworld_attack", robustness={"attack": None}).robustness.attack is None
    again = ERR.resolve_config(changed, context(), ["red"])  # the report's config resolves to itself
    assert again.robustness.attack == changed.robustness.attack


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"robustness": {"attack": "unlearndifatk"}},
            "robustness.attack: Unknown attack 'unlearndifatk'.*Did you mean 'unlearndiffatk'",
        ),  # fmt: skip
        ({"robustness": {"attack": {"name": "unlearndiffatk", "iteratons": 3}}}, "Did you mean 'iterations'"),
        (
            {"robustness": {"attack": {"name": "unlearndiffatk", "k": 0}}},
            "robustness.attack \\(unlearndiffatk\\): k must be >= 1",
        ),  # fmt: skip
        (
            {"robustness": {"attack": {"name": "auto", "iterations": 3}}},
            "the err protocol 'err_miniworld' has none; name the attack",
        ),
        ({"erasure": {"attack": "unlearndiffatk"}}, "unknown key 'attack'"),
    ],
)
def test_a_bad_attack_is_refused_before_any_model_loads(tmp_path, config, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SingleBenchmarkRunner("free_run", "err", {}, config, tmp_path, model="miniworld")
    assert not any(tmp_path.iterdir())  # nothing written


class FakeSession:
    """The engine's attack session with outcomes fixed in advance (the property is about counting, not searching)."""

    def __init__(self, wins: list[bool]) -> None:
        self.wins = wins

    def outcome(self, record: PromptRecord) -> tuple[AttackOutcome, bool]:
        win = self.wins[record.index % len(self.wins)]
        return AttackOutcome(f"adv {record.prompt}", win, 2, 0.1, 1 if win else None), False

    def files(self, record: PromptRecord, outcome: AttackOutcome) -> dict[str, Any]:
        return {"image_file": None, "embedding_file": None}

    def stats(self) -> dict[str, Any]:
        return {}


def drawn(records: list[PromptRecord], red: list[bool]) -> list[Image.Image]:
    """What the model 'drew': the asked scene, or a red one where ``red`` says so (the real CNN reads them)."""
    rng = np.random.default_rng(0)
    out = []
    for record, is_red in zip(records, red, strict=True):
        colour = "red" if is_red else (record.extra.get("asks") or record.extra.get("colour") or "blue")
        colour = "blue" if colour == "red" and not is_red else colour
        out.append(Image.fromarray(render(Scene(colour, record.extra.get("shape") or "circle", "plain"), rng)))
    return out


@settings(max_examples=8, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=6), st.lists(st.booleans(), min_size=1, max_size=6))
def test_robustness_after_attack_is_never_above_robustness_before(red: list[bool], wins: list[bool]) -> None:
    config = resolved(limit=2, robustness={"attack": TINY_BUDGET, "samples_per_prompt": 1})
    metric = ERR(config, context())
    metric.attach_attack(FakeSession(wins))
    records = metric.load_dataset().records
    images = drawn(records, [red[i % len(red)] and r.extra["arm"] != "retention" for i, r in enumerate(records)])
    metric.update(images, records)
    result = metric.compute()
    robust = result.details["arms"]["robustness"]
    assert result.name == "err_miniworld_unlearndiffatk"
    assert robust["rate"] <= robust["rate_before_attack"]
    block = robust["attack"]
    assert block["asr_after"] >= block["asr_before"] and robust["rate"] == pytest.approx(1 - block["asr_after"])
    assert robust["rate_before_attack"] == pytest.approx(1 - block["asr_before"])
    # Only the robustness images are attacked, each unflagged one once (a flagged one is skipped).
    assert [p["index"] for p in block["per_prompt"]] == [r.index for r in records if r.extra["arm"] == "robustness"]
    rates = [result.details[a] for a in ("erasure", "retention")]
    assert result.value <= harmonic_mean([*rates, robust["rate_before_attack"]]) + 1e-12


@pytest.mark.slow
def test_the_robustness_arm_runs_an_attack_on_tiny(tmp_path, cache_dir) -> None:
    config = {"limit": 1, "robustness": {"attack": TINY_BUDGET}}
    report = SingleBenchmarkRunner("negative_prompt", "err", {}, config, tmp_path / "out", model="tiny",
                                   cache_dir=cache_dir).run()  # fmt: skip
    result = report["metric_result"]
    robust = result["details"]["arms"]["robustness"]
    assert result["name"] == "err_demo_unlearndiffatk" and report["metric_config"]["robustness"]["attack"]["k"] == 5
    block = robust["attack"]
    assert block["attack"]["iterations"] == 1 and block["follows"]["repo"] == "OPTML-Group/Diffusion-MU-Attack"
    assert robust["rate"] <= robust["rate_before_attack"] and robust["rate"] == pytest.approx(1 - block["asr_after"])
    assert len(block["per_prompt"]) == robust["n"] == 1
    searched = [p for p in block["per_prompt"] if "skipped" not in p]
    assert block["attacks_searched"] == len(searched)
    for entry in searched:
        # k prefix tokens, then the prompt as the tokenizer decodes it (cut to the text encoder's length)
        assert entry["iterations"] >= 1 and entry["plain_prompt"].split()[1] in entry["prompt"].split()[3:8]
    # A rerun reuses the sealed outcome: nothing is searched again.
    again = SingleBenchmarkRunner("negative_prompt", "err", {}, config, tmp_path / "again", model="tiny",
                                  cache_dir=cache_dir).run()  # fmt: skip
    block = again["metric_result"]["details"]["arms"]["robustness"]["attack"]
    assert (block["attacks_searched"], block["attacks_reused"]) == (0, len(searched))
    assert again["metric_result"]["value"] == result["value"]


@pytest.mark.slow
def test_on_the_miniworld_slds_robustness_falls_under_attack(tmp_path, cache_dir) -> None:
    """Measured (docs/err_attacks.md): SLD's MiniWorld preset keeps red out of 5 of the first 6 rewordings, and
    UnlearnDiffAtk's prefix tokens (on its UNet, rendered with its safety guidance) bring red back for 2 of them:
    robustness 0.83 -> 0.50. No training (SLD changes sampling only), so the test costs the searches alone."""
    config = {"protocol": "err_miniworld_attack", "limit": 1, "robustness": {"limit": 6}}
    report = SingleBenchmarkRunner("sld", "err", {}, config, tmp_path, model="miniworld", cache_dir=cache_dir,
                                   num_threads=1).run()  # fmt: skip
    robust = report["metric_result"]["details"]["arms"]["robustness"]
    assert robust["rate_before_attack"] - robust["rate"] >= 0.2, robust["attack"]
    assert robust["attack"]["attack"]["timesteps"] == 5 and robust["n"] == 6
