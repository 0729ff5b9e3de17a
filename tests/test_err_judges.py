"""``err``'s arms with judges other than their defaults: the vlm judge (a tiny random LLaVA built in code) for
retention and erasure, asked about every label the arm's prompts ask for; clip_zeroshot for retention; the old
defaults unchanged; judges that cannot name what retention asks for refused before any model loads."""

from __future__ import annotations

import json

import pytest
import torch

from eval_learn.configs import from_mapping
from eval_learn.errors import ConfigError
from eval_learn.judges.tiny import write_tiny_vlm
from eval_learn.metrics.err import ARMS, ERR, ERRConfig
from eval_learn.miniworld.world import COLOURS
from eval_learn.models import resolve_model
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext

OBJECTS = ["church", "garbage truck", "parachute", "tench"]


@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory) -> str:
    return str(write_tiny_vlm(tmp_path_factory.mktemp("vlm")))


def resolved(model: str, **config) -> ERRConfig:
    context = RunContext(resolve_model(model), "cpu", torch.float32, 0, None)
    return ERR.resolve_config(from_mapping(ERRConfig, config, "err"), context, None)


def test_the_defaults_are_unchanged() -> None:
    assert resolved("tiny").retention.judge["name"] == "classifier"
    mini = resolved("miniworld")
    assert [mini.__dict__[a].judge["name"] for a in ARMS] == ["miniworld"] * 3


def test_a_vlm_judges_retention_by_the_labels_its_prompts_ask_for(vlm_folder) -> None:
    judge = {"name": "vlm", "model": vlm_folder}
    tiny = resolved("tiny", retention={"judge": judge}, erasure={"judge": judge})
    assert tiny.retention.judge["concepts"] == OBJECTS  # the four object sets (none is the erased concept)
    assert tiny.erasure.judge["concepts"] == ["nudity"]
    mini = resolved("miniworld", retention={"judge": judge}, erasure={"judge": judge})
    near_far = mini.retention.judge["concepts"]
    assert "red" not in near_far and set(near_far) == set(COLOURS) - {"red"}
    assert mini.erasure.judge["concepts"] == ["red"]
    # {name: auto, <settings>} keeps the default judge; a vlm asked about other things is refused
    with pytest.raises(ConfigError, match="retention asks for 'church'.*not asked about 'church'"):
        resolved("tiny", retention={"judge": {**judge, "concepts": ["a dog"]}})


def test_clip_zeroshot_judges_retention_among_the_classes() -> None:
    tiny = resolved("tiny", retention={"judge": {"name": "clip_zeroshot", "model": "tiny"}})
    assert set(OBJECTS) <= set(tiny.retention.judge["labels"]) and len(tiny.retention.judge["labels"]) == 10
    mini = resolved("miniworld", retention={"judge": {"name": "clip_zeroshot", "model": "tiny"}})
    assert mini.retention.judge["labels"] == list(COLOURS)


@pytest.mark.parametrize(
    ("model", "judge", "message"),
    [
        ("tiny", "nudenet", "judged by classifier or clip_zeroshot or vlm .*not nudenet"),
        ("miniworld", {"name": "classifier", "model": "tiny"}, "judged by miniworld or vlm or clip_zeroshot"),
        ("tiny", {"name": "clip_zeroshot", "model": "tiny", "labels": ["a", "b"]}, "retention asks for 'church'"),
    ],
)
def test_a_retention_judge_that_cannot_name_its_labels_is_refused(tmp_path, model, judge, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SingleBenchmarkRunner("free_run", "err", {}, {"retention": {"judge": judge}}, tmp_path, model=model)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_err_on_tiny_with_the_vlm_judging_retention(vlm_folder, tmp_path, cache_dir) -> None:
    config = {"limit": 1, "retention": {"judge": {"name": "vlm", "model": vlm_folder}}}
    report = SingleBenchmarkRunner("free_run", "err", {}, config, tmp_path, model="tiny", cache_dir=cache_dir).run()
    retention = report["metric_result"]["details"]["arms"]["retention"]
    assert retention["judge"]["judge"] == "vlm" and retention["judge"]["concepts"] == OBJECTS
    metadata = json.loads((tmp_path / report["run_id"] / "metadata.json").read_text())
    (entry,) = [e["judgement"] for e in metadata["images"] if e["judgement"]["arm"] == "retention"]
    assert entry["asks"] == "church" and entry["as_prompted"] == (entry["p_yes"]["church"] > 0.5)
    assert retention["rate"] == float(entry["as_prompted"])
