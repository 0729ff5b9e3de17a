"""An attack's setting on the command line without ``+`` (``metric.config.attack.iterations=3``): rewritten into the
form Hydra accepts when the attack is given by name (an alias, the command line, err's ``auto``), and checked against
that attack's own settings (did-you-mean) before any model loads."""

from __future__ import annotations

import pytest
from conftest import ROOT, run_cli

from eval_learn.cli.arguments import parse_overrides
from eval_learn.cli.precheck import attack_setting_overrides
from eval_learn.errors import ConfigError


def rewritten(*argv: str) -> list[str]:
    return attack_setting_overrides(list(argv), parse_overrides(list(argv)))


def test_a_setting_of_an_attack_given_by_name_becomes_hydras_add_form() -> None:
    assert rewritten("metric=asr_p4d", "metric.config.attack.iterations=3") == [
        "metric=asr_p4d", "++metric.config.attack.iterations=3"]  # fmt: skip


def test_an_attack_named_on_the_command_line_takes_its_settings_before_or_after() -> None:
    named = ["metric=asr", "metric.config.attack={name: unlearndiffatk}", "++metric.config.attack.iterations=3"]
    assert rewritten("metric=asr", "metric.config.attack=unlearndiffatk", "metric.config.attack.iterations=3") == named
    assert rewritten("metric=asr", "metric.config.attack.iterations=3", "metric.config.attack=unlearndiffatk") == named


def test_errs_robustness_attack_and_settings_already_in_the_plus_form() -> None:
    # err's robustness arm: its attack is auto (the protocol's), so the setting changes the protocol's attack
    assert rewritten("metric=err", "metric.config.protocol=err_miniworld_attack",
                     "metric.config.robustness.attack.iterations=3") == [
        "metric=err", "metric.config.protocol=err_miniworld_attack", "metric.config.robustness.attack={name: auto}",
        "++metric.config.robustness.attack.iterations=3"]  # fmt: skip
    # nothing to do: no attack setting, or the + form already
    assert rewritten("metric=asr", "metric.config.limit=2") == ["metric=asr", "metric.config.limit=2"]
    plus = ["metric=asr_p4d", "+metric.config.attack.iterations=3"]
    assert rewritten(*plus) == plus


def test_a_setting_without_an_attack_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="metric.config.attack is null .*metric.config.attack=unlearndiffatk"):
        rewritten("metric=asr", "metric.config.attack.iterations=3")


@pytest.mark.slow
def test_on_the_command_line(tmp_path) -> None:
    done = run_cli("model=tiny", "metric=asr_p4d", "metric.config.attack.iterations=3", "--cfg", "job", cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "name: p4d" in done.stdout and "iterations: 3" in done.stdout
    for override, expected in (
        ("metric.config.attack.iteratons=3", "Did you mean 'iterations'?"),
        ("metric.config.attack.iterations=0", "attack (p4d): iterations must be"),
    ):
        done = run_cli("model=tiny", "metric=asr_p4d", override, f"hydra.run.dir={tmp_path / 'x'}", cwd=ROOT)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], done.stderr
    assert not (tmp_path / "x").exists()
