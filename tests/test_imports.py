"""The library's imports point one way: runners → engine → techniques / metrics → judges / prompt sets → basics.
The MiniWorld's offline training script needs none of the benchmark; parts never pull the machinery above them."""

from __future__ import annotations

import subprocess
import sys

import pytest

ABOVE = ("eval_learn.runners", "eval_learn.app", "eval_learn.engine.run", "eval_learn.__main__")


def loaded_by(module: str) -> set[str]:
    code = f"import {module}, sys; print(' '.join(m for m in sys.modules if m.startswith('eval_learn')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("eval_learn.miniworld.train", ("eval_learn.metrics", "eval_learn.techniques", "eval_learn.engine", *ABOVE)),
        ("eval_learn.metrics.asr", (*ABOVE, "eval_learn.engine", "eval_learn.techniques")),
        ("eval_learn.metrics.ua_ira", (*ABOVE, "eval_learn.engine", "eval_learn.techniques")),
        ("eval_learn.metrics.clip_score", (*ABOVE, "eval_learn.engine", "eval_learn.techniques")),
        ("eval_learn.metrics.fid", (*ABOVE, "eval_learn.engine", "eval_learn.techniques")),
        ("eval_learn.techniques.esd", (*ABOVE, "eval_learn.metrics", "eval_learn.engine")),
        ("eval_learn.judges.nudenet", (*ABOVE, "eval_learn.metrics", "eval_learn.engine", "eval_learn.techniques")),
        ("eval_learn.judges.q16", (*ABOVE, "eval_learn.metrics", "eval_learn.engine", "eval_learn.techniques")),
        ("eval_learn.judges.clip_zeroshot", (*ABOVE, "eval_learn.metrics", "eval_learn.engine")),
        ("eval_learn.datasets.i2p", (*ABOVE, "eval_learn.metrics", "eval_learn.engine", "eval_learn.techniques")),
        ("eval_learn.settings", (*ABOVE, "eval_learn.metrics", "eval_learn.engine", "eval_learn.techniques")),
    ],
)
def test_imports_point_one_way(module, forbidden) -> None:
    pulled = loaded_by(module)
    wrong = sorted(m for m in pulled if m.startswith(forbidden))
    assert not wrong, f"{module} pulls {wrong}"
