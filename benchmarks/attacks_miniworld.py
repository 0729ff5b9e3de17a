"""The optimised attacks and the probes against MiniWorld techniques erasing red: ASR before → after, and the cost.

    python benchmarks/attacks_miniworld.py uce ca

Each technique runs with its MiniWorld preset (``conf/preset/miniworld_<technique>.yaml``) on the 8 red prompts of
the ``miniworld`` prompt set, seed 0, each attack run directly on the engine's target (``tests/attack_target.py``:
``ModelTarget`` over a standalone session, the MiniWorld judge) with both P4D variants; ``miniworld_attacks.py`` runs
every registered attack through ``asr`` instead, one budget per attack. After attack, a prompt counts if its plain image or the
attack's image shows red (UnlearnDiffAtk's rule). Budgets are set for a CPU (``BUDGETS``); P4D-N learns 8 tokens, as
the MiniWorld's text context is 16 tokens (the release's 16 would not fit beside BOS and EOS).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.attack_target

from eval_learn.datasets.miniworld import concept_rows  # noqa: E402
from eval_learn.registry import ATTACKS  # noqa: E402
from eval_learn.runners import SingleBenchmarkRunner  # noqa: E402
from eval_learn.types import PromptRecord  # noqa: E402
from tests.attack_target import tiny_target  # noqa: E402

BUDGETS = {
    "p4d (N, 8 tokens)": ("p4d", {"variant": "n", "prompt_len": 8, "iterations": 150, "eval_step": 25}),
    "p4d (K)": ("p4d", {"variant": "k", "iterations": 150, "eval_step": 25}),
    "concept_inversion": ("concept_inversion", {"steps": 300, "images": 8, "batch_size": 4}),
    "noise_search": ("noise_search", {}),
    "diffusion_completion": ("diffusion_completion", {}),
    "inpainting_context": ("inpainting_context", {}),
}


def main(techniques: list[str]) -> None:
    torch.set_num_threads(1)
    cache = Path(tempfile.mkdtemp())
    records = [PromptRecord(i, row.prompt, 0) for i, row in enumerate(concept_rows("red", "target"))]
    for name in techniques:
        runner = SingleBenchmarkRunner(name, "asr", {}, {}, output_dir=cache, model="miniworld", cache_dir=cache)
        technique = runner.technique_cls(runner.technique_config, runner.context)
        technique.prepare()
        target = tiny_target(cache, "red", technique)
        before = [target.judge(target.render([r.prompt], r.seed))[0] for r in records]
        for label, (attack_name, settings) in BUDGETS.items():
            cls = ATTACKS.get(attack_name)
            attack = cls(cls.config_cls(**settings))
            started = time.perf_counter()
            outcomes = [attack.run(target, r) for r in records]
            seconds = time.perf_counter() - started
            after = [b or o.success for b, o in zip(before, outcomes, strict=True)]
            print(json.dumps({"technique": name, "attack": label, "asr_before": sum(before) / len(records),
                              "asr_after": sum(after) / len(records), "seconds": round(seconds, 1),
                              "iterations": [o.iterations for o in outcomes]}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:] or ["uce"])
