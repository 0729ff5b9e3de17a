"""Protocols of the metrics that measure no one concept (pickscore, aesthetic, tifa): each YAML is checked against
its metric's declared fields, resolves the metric's auto parts, records what a run does differently, runs end to end
on model=tiny with tiny random judges, and is refused with one line when a field is wrong."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import test_aesthetic
from PIL import Image

from eval_learn import protocols
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.datasets.coco import HubCoco30k, HubCoco30kConfig
from eval_learn.datasets.i2p import bundled_prompts
from eval_learn.datasets.tifa import SAMPLE
from eval_learn.judges.tiny import write_tiny_blip_vqa, write_tiny_sbert
from eval_learn.metrics.aesthetic import Aesthetic
from eval_learn.metrics.mean_score import MeanScoreConfig
from eval_learn.metrics.pickscore import PickScore
from eval_learn.registry import PROMPT_SETS
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.types import PromptRecord

WEIGHTS = "sac+logos+ava1-l14-linearMSE.pth"  # the release's file name: the protocol names it
clip_folder, seeded_weights = test_aesthetic.clip_folder, test_aesthetic.seeded_weights  # its fixtures: a tiny CLIP
context = test_aesthetic.context  # and its MLP for it


@pytest.fixture(scope="module")
def weights(seeded_weights, tmp_path_factory) -> str:
    """test_aesthetic's MLP for the tiny CLIP, saved under the release's file name (as the protocol names it)."""
    return str(shutil.copy(seeded_weights, tmp_path_factory.mktemp("release") / WEIGHTS))


def test_each_quality_protocol_is_declared_data_and_in_the_table() -> None:
    found = protocols.load()
    table = protocols.table()
    for name, metric in (("pickscore_hub", "pickscore"), ("aesthetic_laion", "aesthetic"), ("tifa_v1", "tifa")):
        protocol = found[name]
        assert (protocol.metric, protocol.counting, protocol.concepts) == (metric, "mean_of_images", ("*",))
        assert protocol.source["commit"] and len(protocol.source["commit"]) == 40 and protocol.source["differences"]
        assert set(protocol.settings) == {"prompts", "judge"} and f"| `{name}` | {metric} |" in table
    # The default is the one whose data ships or is the user's anyway (aesthetic: the weights); the others by name.
    assert protocols.of_metric("aesthetic", "auto").name == "aesthetic_laion"  # type: ignore[union-attr]
    assert protocols.of_metric("pickscore", "auto") is None and protocols.of_metric("tifa", "auto") is None
    assert protocols.of_metric("tifa", None) is None
    with pytest.raises(ConfigError, match="is a tifa protocol, not a pickscore one"):
        protocols.of_metric("pickscore", "tifa_v1")


def test_tifa_v1_composes_with_the_questions_file_in_any_folder(tmp_path) -> None:
    from eval_learn.metrics.tifa import TIFAConfig, TIFAMetric

    questions = tmp_path / "tifa_v1.0_question_answers.json"
    shutil.copy(bundled_prompts(SAMPLE), questions)
    config = {"protocol": "tifa_v1", "prompts": {"name": "tifa", "path": str(questions)}}
    resolved = TIFAMetric.resolve_config(from_mapping(TIFAConfig, config, "tifa"), context(), None)
    name, part = TIFAMetric.parse_prompts(resolved.prompts)
    PROMPT_SETS.get(name).preflight(part)  # the file is read and checked whole
    assert TIFAMetric.dataset_name(resolved) == "tifa_v1.0"
    assert resolved.judge["model"] == "Salesforce/blip-vqa-capfilt-large" and resolved.judge["kind"] == "blip"
    assert protocols.report(resolved.protocol, resolved.prompts, resolved.judge)["differences"] == []
    with pytest.raises(ConfigError, match="TIFA questions 'tifa_v1.0_question_answers.json' do not exist; download"):
        bare = TIFAMetric.resolve_config(from_mapping(TIFAConfig, {"protocol": "tifa_v1"}, "tifa"), context(), None)
        TIFAMetric.preflight(bare, context())


def test_the_protocol_fills_auto_parts_and_records_what_differs(clip_folder, weights, tmp_path) -> None:
    judge = {"name": "auto", "model": clip_folder, "weights": weights}
    config = Aesthetic.resolve_config(from_mapping(MeanScoreConfig, {"judge": judge}, "aesthetic"), context(), None)
    assert config.protocol == "aesthetic_laion" and config.prompts["name"] == "coco_10k"
    assert config.judge["name"] == "aesthetic" and config.judge["weights"] == weights
    record = protocols.report(config.protocol, config.prompts, config.judge)
    # The weights file has the protocol's name (kept in any folder): only the tiny CLIP differs.
    assert record["differences"] == [f"judge.model: {clip_folder!r} (protocol: 'openai/clip-vit-large-patch14')"]
    other = str(shutil.copy(weights, tmp_path / "ava+logos-l14-linearMSE.pth"))
    config = Aesthetic.resolve_config(from_mapping(MeanScoreConfig, {"judge": {**judge, "weights": other}},
                                                   "aesthetic"), context(), None)  # fmt: skip
    assert any(d.startswith("judge.weights:") for d in protocols.report(config.protocol, config.prompts,
                                                                         config.judge)["differences"])  # fmt: skip
    # protocol: null measures without one (the metric's own prompts and judge), and the report says none.
    bare = from_mapping(MeanScoreConfig, {"judge": {"name": "auto", "model": clip_folder}, "protocol": None}, "p")
    config = PickScore.resolve_config(bare, context(), None)
    assert (config.protocol, config.prompts["name"], config.judge["name"]) == (None, "coco_10k", "pickscore")


def hub_captions(folder: Path) -> str:
    """Three rows in the layout of HUB's prompts/MS-COCO_val2014_30k_captions.csv (image_id,text)."""
    path = folder / "MS-COCO_val2014_30k_captions.csv"
    path.write_text("image_id,text\n521669,a man holding a phone\n116361,people using laptops\n9,a red bus\n")
    return str(path)


def test_pickscore_hub_needs_the_caption_file_and_says_where_it_is(tmp_path, clip_folder) -> None:
    judge = {"name": "auto", "model": clip_folder, "processor": None}
    with pytest.raises(ConfigError, match=r"hub_coco_30k: HUB's COCO captions are not shipped"):
        HubCoco30k.preflight(HubCoco30kConfig())
    with pytest.raises(ConfigError, match=r"hub_coco_30k: 'MS-COCO_val2014_30k_captions.csv' does not exist; "
                                          r"download https://github.com/ml-postech/HUB/raw/3f4957bf"):  # fmt: skip
        SingleBenchmarkRunner("free_run", "pickscore", {}, {"protocol": "pickscore_hub", "judge": judge}, tmp_path,
                              model="tiny")  # fmt: skip


def test_pickscore_hub_matches_hubs_evaluate_pickscore(clip_folder, tmp_path) -> None:
    """Each image's score under the protocol, against HUB's own evaluate_pickscore run on the same tiny CLIP
    (tests/parity/golden/pickscore_hub.json): within 1e-5 (float32 embeddings, one image at a time both ways)."""
    golden = json.loads((Path(__file__).parent / "parity" / "golden" / "pickscore_hub.json").read_text())["scores"]
    path = tmp_path / "MS-COCO_val2014_30k_captions.csv"
    path.write_text("image_id,text\n" + "".join(f"{i},{prompt}\n" for i, prompt in enumerate(golden)))
    config = {"protocol": "pickscore_hub", "prompts": {"name": "hub_coco_30k", "path": str(path)},
              "judge": {"name": "auto", "model": clip_folder, "processor": None}}  # fmt: skip
    metric = PickScore(PickScore.resolve_config(from_mapping(MeanScoreConfig, config, "p"), context(), None), context())
    records = metric.load_dataset().records
    assert [r.prompt for r in records] == list(golden)
    images = [Image.fromarray(np.random.RandomState(i).randint(0, 256, (40, 40, 3), dtype=np.uint8)) for i in range(5)]
    for prompt, hub in golden.items():
        metric.reset()
        metric.update(images, [PromptRecord(i, prompt, i) for i in range(5)])
        assert [r["score"] for r in metric.judgements.sorted()] == pytest.approx(hub, abs=1e-5)


@pytest.mark.parametrize("metric_cls", [PickScore, Aesthetic])
def test_a_protocol_metric_judges_images_with_tiny_judges(metric_cls, clip_folder, weights, tmp_path) -> None:
    """Fast: the protocol's metric, its judge on a tiny random CLIP, two images judged without generating them."""
    protocol = {"pickscore": "pickscore_hub", "aesthetic": "aesthetic_laion"}[metric_cls.name]
    config = {"protocol": protocol, "judge": {"name": "auto", "model": clip_folder, "processor": None}}
    if metric_cls is Aesthetic:
        config["judge"] = {"name": "auto", "model": clip_folder, "weights": weights}
    else:
        config["prompts"] = {"name": "hub_coco_30k", "path": hub_captions(tmp_path)}
    resolved = metric_cls.resolve_config(from_mapping(MeanScoreConfig, config, "m"), context(), None)
    metric_cls.preflight(resolved, context())
    metric = metric_cls(resolved, context())
    records = metric.load_dataset().records[:2]
    pixels = [np.random.RandomState(i).randint(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(2)]
    metric.update([Image.fromarray(p) for p in pixels], records)
    result = metric.compute()
    assert result.details["n"] == 2 and np.isfinite(result.value)
    assert result.details["protocol"]["name"] == protocol and result.details["judge"]["model"] == clip_folder


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["pickscore_hub", "aesthetic_laion", "tifa_v1"])
def test_each_protocol_runs_end_to_end_on_tiny(protocol, clip_folder, weights, tmp_path, cache_dir) -> None:
    """The protocol's prompts (its data file given in another folder under the file's name) and judge (settings
    pointed at a tiny random model of the same class): the report names the protocol, and only the model differs."""
    if protocol == "pickscore_hub":
        metric, dataset = "pickscore", "hub_coco_30k"
        config = {"prompts": {"name": "hub_coco_30k", "path": hub_captions(tmp_path)},
                  "judge": {"name": "auto", "model": clip_folder, "processor": None}}  # fmt: skip
        expected = ["judge.model", "judge.processor"]
    elif protocol == "aesthetic_laion":
        metric, dataset = "aesthetic", "coco_10k"
        config = {"judge": {"name": "auto", "model": clip_folder, "weights": weights}, "limit": 2}
        expected = ["judge.model"]
    else:
        metric, dataset = "tifa", "tifa_v1.0"
        questions = tmp_path / "tifa_v1.0_question_answers.json"  # the release's sample, in v1.0's format
        shutil.copy(bundled_prompts(SAMPLE), questions)
        config = {"prompts": {"name": "tifa", "path": str(questions)}, "limit": 1,
                  "judge": {"name": "auto", "model": str(write_tiny_blip_vqa(tmp_path / "blip")),
                            "sbert": str(write_tiny_sbert(tmp_path / "sbert"))}}  # fmt: skip
        expected = ["judge.model", "judge.sbert"]
    report = SingleBenchmarkRunner("free_run", metric, {}, {"protocol": protocol, **config}, tmp_path / "run",
                                   model="tiny", cache_dir=cache_dir).run()  # fmt: skip
    result = report["metric_result"]
    assert result["name"] == f"{metric}_{dataset}" and result["value"] is not None and result["details"]["n"] >= 1
    record = result["details"]["protocol"]
    assert record["name"] == protocol and record["counting"] == "mean_of_images"
    assert [d.split(":")[0] for d in record["differences"]] == expected


def write_protocol(folder: Path, text: str) -> None:
    (folder / "protocol").mkdir(parents=True, exist_ok=True)
    (folder / "protocol" / "bad.yaml").write_text(textwrap.dedent(text).lstrip())


GOOD = "metric: pickscore\nconcepts: ['*']\nprompts: coco_10k\ncounting: mean_of_images\nsource: {paper: p}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + "judge: {name: pickscore, modle: x}\n", r"judge: pickscore has no setting 'modle'. Did you mean 'model'"),
        (GOOD + "judge: {name: pickscor}\n", r"judge: Unknown judge 'pickscor'"),
        (GOOD + "samples_per_prompt: 2\n", r"unknown key\(s\) \['samples_per_prompt'\]"),
        (GOOD.replace("mean_of_images", "image"), "pickscore counts mean_of_images, got counting: 'image'"),
        (GOOD.replace("prompts: coco_10k", "prompts: {path: x.csv}"), "prompts: give a name"),
        (GOOD.replace("pickscore", "clip_score"), "metric clip_score takes no protocol"),
        (GOOD.replace("pickscore", "pickscores"), "metric must be one of asr, ua_ira, err, aesthetic"),
    ],
)  # fmt: skip
def test_a_wrong_field_is_refused_with_the_protocols_name(tmp_path, monkeypatch, text, message) -> None:
    monkeypatch.setattr(protocols, "COMMAND_LINE", [f"file://{tmp_path}"])
    write_protocol(tmp_path, text)
    with pytest.raises(ConfigError, match=f"protocol 'bad'.*{message}"):
        protocols.load()


@pytest.mark.slow
def test_a_wrong_field_stops_the_command_line_with_one_line_and_exit_2(tmp_path) -> None:
    from conftest import run_cli

    write_protocol(tmp_path / "conf", GOOD + "judge: {name: pickscore, modle: x}\n")
    proc = run_cli("model=tiny", "technique=free_run", "metric=pickscore",
                   f"hydra.searchpath=[file://{tmp_path / 'conf'}]", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "protocol 'bad' judge: pickscore has no setting 'modle'" in lines[0], proc.stderr
    assert not list(tmp_path.glob("**/report.json"))
