"""A plain (non-editable) install must carry the configs and bundled prompt files."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_wheel_contains_configs_and_prompt_files(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "eval_learn/conf/config.yaml",
        "eval_learn/conf/technique/esd.yaml",
        "eval_learn/conf/metric/asr.yaml",
        "eval_learn/conf/metrics/asr.yaml",
        "eval_learn/conf/model/tiny.yaml",
        "eval_learn/conf/preset/tiny_esd.yaml",
        "eval_learn/conf/hydra/launcher/slurm.yaml",
        "eval_learn/data/prompts/demo_i2p.csv",
        "eval_learn/conf/model/miniworld.yaml",
        "eval_learn/conf/metric/ua_ira.yaml",
        "eval_learn/assets/miniworld/model_index.json",
        "eval_learn/assets/miniworld/unet/diffusion_pytorch_model.safetensors",
        "eval_learn/assets/miniworld/tokenizer/vocab.json",
        "eval_learn/assets/miniworld/judge/judge.safetensors",
        "eval_learn/data/prompts/unlearndiffatk_nudity.csv",
        "eval_learn/data/prompts/LICENSE-UnlearnDiffAtk",
        "eval_learn/data/prompts/coco_10k.csv",
        "eval_learn/conf/metric/clip_score.yaml",
        "eval_learn/conf/metrics/fid.yaml",
    ):
        assert expected in names, expected
    protocols = {f"eval_learn/conf/protocol/{p.name}" for p in (ROOT / "conf" / "protocol").glob("*.yaml")}
    assert protocols and not protocols - names, f"protocols missing from the wheel: {protocols - names}"
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "eval_learn").rglob("*.py")}
    assert not sources - names, (
        f"modules missing from the wheel (a package not listed in pyproject?): {sources - names}"
    )
