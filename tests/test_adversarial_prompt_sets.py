"""The published adversarial prompt sets (Ring-A-Bell's, MMA-Diffusion's, P4D's) from local copies made here in their
published formats, the offline message, and the choice among a hub copy's files. The hub itself cannot be reached
from tests: the hub folder is a local folder given in its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_learn.datasets.adversarial import P4D, MMADiffusionNSFW, PublishedConfig, RingABellNudity
from eval_learn.errors import ConfigError
from eval_learn.registry import PROMPT_SETS
from tests.conftest import run_cli

MMA = (
    "target_prompt,adv_prompt,sanitized_adv_prompt,success_against_sanitization_defense,clean_prompt\n"
    "a red car,car rouge <|startoftext|>thing qq,car thing,True,a blue car\n"
    "the dog,doggo ok pp,doggo,False,a cat\n"
)
RING = "prompt,case_number,evaluation_seed\nqq zz red tree,0,42\nww church bb,1,7\n"
P4D_CSV = (  # run_p4dn.py writes I2P's columns (with the optimised prompt) behind an index
    ",prompt,categories,evaluation_seed,evaluation_guidance,case_number\n0,opt tokens a house,sexual,1664501552,7,20\n"
)


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return str(tmp_path / name)


def test_registered() -> None:
    assert PROMPT_SETS.get("ring_a_bell_nudity") is RingABellNudity
    assert PROMPT_SETS.get("mma_diffusion_nsfw") is MMADiffusionNSFW and PROMPT_SETS.get("p4d_prompts") is P4D


def test_mma_reads_the_adversarial_prompt_or_the_column_asked_for(tmp_path) -> None:
    path = write(tmp_path, "mma.csv", MMA)
    MMADiffusionNSFW.preflight(PublishedConfig(path=path))
    rows = MMADiffusionNSFW(PublishedConfig(path=path)).rows()
    assert [r.prompt for r in rows] == ["car rouge <|startoftext|>thing qq", "doggo ok pp"]
    assert all(r.seed is None for r in rows)  # no seeds published: the prompt set draws them from the text
    rows = MMADiffusionNSFW(PublishedConfig(path=path, column="clean_prompt")).rows()
    assert [r.prompt for r in rows] == ["a blue car", "a cat"]
    meta = MMADiffusionNSFW(PublishedConfig(path=path)).metadata()
    assert meta["source"] == path and meta["column"] == "adv_prompt"
    with pytest.raises(ConfigError, match="no 'adv_prompt' column"):
        MMADiffusionNSFW.preflight(PublishedConfig(path=write(tmp_path, "other.csv", RING)))


def test_ring_a_bell_and_p4d_keep_their_seeds_and_guidance(tmp_path) -> None:
    rows = RingABellNudity(PublishedConfig(path=write(tmp_path, "rab.csv", RING))).rows()
    assert [(r.prompt, r.seed) for r in rows] == [("qq zz red tree", 42), ("ww church bb", 7)]
    (row,) = P4D(PublishedConfig(path=write(tmp_path, "p4d.csv", P4D_CSV))).rows()
    assert (row.prompt, row.seed, row.guidance_scale, row.categories) == (
        "opt tokens a house",
        1664501552,
        7.0,
        ("sexual",),
    )


def test_offline_without_a_cached_copy_is_a_clear_config_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    for cls in (RingABellNudity, MMADiffusionNSFW, P4D):
        with pytest.raises(ConfigError, match="not in the local cache and HF_HUB_OFFLINE is set.*path: FILE"):
            cls.preflight(PublishedConfig())


def test_a_hub_copy_with_several_files_asks_which(monkeypatch, tmp_path) -> None:
    folder = tmp_path / "snapshot"
    (folder / "data").mkdir(parents=True)
    write(folder / "data", "esd_p4dn.csv", P4D_CSV)
    write(folder, "sld_p4dk.csv", P4D_CSV.replace("opt tokens", "other tokens"))
    monkeypatch.setattr(P4D, "_snapshot", classmethod(lambda cls, local_only: folder))
    with pytest.raises(ConfigError, match=r"2 CSV files \(\['data/esd_p4dn.csv', 'sld_p4dk.csv'\]\)"):
        P4D(PublishedConfig()).rows()
    assert P4D(PublishedConfig(file="sld_p4dk.csv")).rows()[0].prompt == "other tokens a house"
    assert P4D(PublishedConfig(file="sld_p4dk.csv")).metadata()["source"] == "hf://datasets/joycenerd/p4d/sld_p4dk.csv"
    with pytest.raises(ConfigError, match="no file 'x.csv'"):
        P4D(PublishedConfig(file="x.csv")).rows()


@pytest.mark.slow
def test_cli_offline_message_and_exit_code(tmp_path) -> None:
    proc = run_cli("model=tiny", "metric=asr", "metric.config.prompts=mma_diffusion_nsfw", cwd=tmp_path,
                   env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "MMA-Diffusion-NSFW-adv-prompts-benchmark) are not in the local cache" in proc.stderr
    assert "Traceback" not in proc.stderr
