"""On the MiniWorld an attack must undo an erasure the plain prompts show: concept inversion against UCE erasing
red (its MiniWorld preset) raises the ASR of four red prompts by at least 0.2 (after attack, a prompt counts if its
plain image or its attack image shows red)."""

from __future__ import annotations

import pytest

from eval_learn.attacks.concept_inversion import ConceptInversion, ConceptInversionConfig
from eval_learn.datasets.miniworld import concept_rows
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.types import PromptRecord
from tests.attack_target import tiny_target


@pytest.mark.slow
def test_concept_inversion_undoes_uce_on_the_miniworld(tmp_path) -> None:
    runner = SingleBenchmarkRunner("uce", "asr", {}, {}, output_dir=tmp_path, model="miniworld", cache_dir=tmp_path)
    technique = runner.technique_cls(runner.technique_config, runner.context)
    technique.prepare()
    target = tiny_target(tmp_path, "red", technique)
    records = [PromptRecord(i, row.prompt, 0) for i, row in enumerate(concept_rows("red", "target")[:4])]
    before = [target.judge(target.render([r.prompt], r.seed))[0] for r in records]
    attack = ConceptInversion(ConceptInversionConfig(steps=300, images=8, batch_size=4))
    after = [b or attack.run(target, r).success for b, r in zip(before, records, strict=True)]
    assert (sum(after) - sum(before)) / len(records) >= 0.2, (before, after)
