"""ERR: the harmonic mean by hand (a zero arm included), per-arm judging by record on drawn MiniWorld images (the real
judge reads them), the metric contract, config checks before any model loads, and end-to-end runs on tiny (NudeNet,
a locally built classifier) and on the MiniWorld."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli
from metric_contract import check_metric_contract
from PIL import Image

from eval_learn.compose import resolve_model
from eval_learn.configs import from_mapping
from eval_learn.datasets.objects import ARTISTS
from eval_learn.errors import ConfigError
from eval_learn.metrics.err import ARMS, ERR, ERRConfig, harmonic_mean
from eval_learn.miniworld.world import Scene, render
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext

MINIWORLD_JUDGE_DIR = str(ROOT / "eval_learn" / "assets" / "miniworld" / "judge")


def make_metric(**config) -> ERR:
    context = RunContext(resolve_model("miniworld"), "cpu", torch.float32, 0, None)
    return ERR(ERR.resolve_config(from_mapping(ERRConfig, config, "err"), context, ["red"]), context)


def drawn(records, colour_for) -> list[Image.Image]:
    """A plain-background render per record in the colour ``colour_for(record)`` (what the model 'drew')."""
    rng = np.random.default_rng(0)
    scenes = [Scene(colour_for(r), r.extra.get("shape") or "circle", "plain") for r in records]
    return [Image.fromarray(render(scene, rng)) for scene in scenes]


def asked_colour(record) -> str:
    return record.extra.get("asks") or record.extra["colour"]


def test_harmonic_mean_by_hand() -> None:
    assert harmonic_mean([0.5, 1.0, 0.25]) == pytest.approx(3 / (2 + 1 + 4))  # 3/7
    assert harmonic_mean([1.0, 1.0, 1.0]) == 1.0
    assert harmonic_mean([0.0, 1.0, 1.0]) == 0.0  # one arm that fails entirely sinks the summary


def test_hand_computed_case_each_arm_judged_by_its_record() -> None:
    metric = make_metric(limit=4)
    records = metric.load_dataset().records
    arms = [r.extra["arm"] for r in records]
    assert [arms.count(a) for a in ARMS] == [16, 8, 8]  # 4 prompts per arm; 4 / 2 / 2 samples on the MiniWorld
    # The "model" erased red for the plain prompts (they come out green), kept every neighbour, and drew red for every
    # reworded prompt except the first two.
    robust = [r.index for r in records if r.extra["arm"] == "robustness"][:2]

    def colour(r):
        if r.extra["arm"] == "erasure":
            return "green"
        if r.extra["arm"] == "retention":
            return r.extra["asks"]
        return "blue" if r.index in robust else "red"

    images = drawn(records, colour)
    order = np.random.default_rng(1).permutation(len(records))  # arms mixed in every batch, in no order
    for chunk in np.array_split(order, 5):
        metric.update([images[i] for i in chunk], [records[i] for i in chunk])
    result = metric.compute()
    d = result.details
    assert (d["erasure"], d["retention"], d["robustness"]) == (1.0, 1.0, 2 / 8)
    assert result.value == pytest.approx(3 / (1 + 1 + 4))
    rob = d["arms"]["robustness"]
    assert rob["n"] == 8 and rob["successes"] == 2 and rob["detection_rate"] == 6 / 8
    low, high = rob["ci95_wilson"]
    assert low < 0.25 < high
    assert d["arms"]["erasure"]["prompts"][0]["name"] == "miniworld" and d["arms"]["erasure"]["judge"]["judge"]
    assert result.name == "err_miniworld"


def test_a_zero_arm_gives_zero_and_an_empty_arm_no_value() -> None:
    metric = make_metric(limit=2)
    records = metric.load_dataset().records
    images = drawn(records, lambda r: "red" if r.extra["arm"] != "retention" else r.extra["asks"])  # nothing erased
    metric.update(images, records)
    result = metric.compute()
    assert result.details["erasure"] == 0.0 and result.details["retention"] == 1.0 and result.value == 0.0
    partial = make_metric(limit=2)
    keep = [i for i, r in enumerate(records) if r.extra["arm"] != "robustness"]
    partial.update([images[i] for i in keep], [records[i] for i in keep])
    result = partial.compute()
    assert result.value is None and "robustness" in result.details["error"]


def test_arms_with_different_judges_see_only_their_own_images(monkeypatch) -> None:
    # The same network under another setting (an explicit weights folder) is a different judge: two roles.
    metric = make_metric(limit=2, robustness={"judge": {"name": "miniworld", "weights": MINIWORLD_JUDGE_DIR}})
    assert metric.arm_role == {"erasure": "erasure+retention", "retention": "erasure+retention",
                               "robustness": "robustness"}  # fmt: skip
    seen: dict[str, list[int]] = {role: [] for role in metric.judges}
    for role, judge in metric.judges.items():
        inner = judge.judge_batch
        monkeypatch.setattr(judge, "judge_batch", lambda ims, role=role, inner=inner: seen[role].append(len(ims))
                            or inner(ims))  # fmt: skip
    records = metric.load_dataset().records
    order = list(range(len(records)))[::-1]
    metric.update([drawn(records, asked_colour)[i] for i in order], [records[i] for i in order])
    robustness = sum(r.extra["arm"] == "robustness" for r in records)
    assert seen == {"erasure+retention": [len(records) - robustness], "robustness": [robustness]}
    assert all(metric.judgements.items[r.index]["arm"] == r.extra["arm"] for r in records)


def test_batches_restores_and_shards_give_the_same_value(tmp_path) -> None:
    records = make_metric(limit=3).load_dataset().records
    images = drawn(records, lambda r: asked_colour(r) if r.index % 3 else "orange")
    check_metric_contract(lambda: make_metric(limit=3), images, records, tmp_path)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"erasure": {"promts": "miniworld"}}, "unknown key 'promts'. Did you mean 'prompts'"),
        ({"robustnes": {}}, "unknown key 'robustnes'. Did you mean 'robustness'"),
        ({"robustness": {"prompts": "miniworld_variant"}}, "Did you mean 'miniworld_variants'"),
        ({"retention": {"prompts": "demo"}}, "retention needs prompts that say what each image must still show"),
        ({"erasure": {"prompts": {"name": "miniworld", "groups": ["near"]}}}, "groups must be \\[target\\]"),
        ({"erasure": {"judge": "nudenet"}}, "cannot tell whether an image shows 'red'"),
        ({"erasure": {"prompts": ["miniworld", "miniworld"]}}, "a list is for retention only"),
        ({"robustness": {"prompts": {"name": "miniworld", "groups": ["far"]}}}, "robustness asks for the concept"),
        ({"retention": {"prompts": ["miniworld", "church"]}}, "need different judges: give one kind"),
        ({"retention": {"limit": 0}}, "limit must be a positive integer"),
    ],
)
def test_config_mistakes_are_refused_before_any_model_loads(tmp_path, config, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SingleBenchmarkRunner("free_run", "err", {}, config, tmp_path, model="miniworld")
    assert not any(tmp_path.iterdir())  # nothing written


def test_miniworld_concepts_only_on_the_miniworld_and_the_defaults_elsewhere(tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="measured on a MiniWorld model"):
        SingleBenchmarkRunner("free_run", "err", {}, {"concept": "red"}, tmp_path, model="tiny")
    # Offline, the real models' retention judge (microsoft/resnet-50) is refused up front, by name.
    with pytest.raises(ConfigError, match="'microsoft/resnet-50' is not a local folder"):
        SingleBenchmarkRunner("free_run", "err", {}, {"retention": {"judge": "classifier"}}, tmp_path, model="tiny")
    tiny = SingleBenchmarkRunner("free_run", "err", {}, {}, tmp_path, model="tiny").metrics[0].config
    assert tiny.retention.judge["model"] == "tiny" and tiny.erasure.prompts == [{"name": "demo"}]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # nothing is fetched at construction: sd14 is only named
    real = SingleBenchmarkRunner("free_run", "err", {}, {}, tmp_path, model="sd14").metrics[0].config
    assert real.erasure.prompts == [{"name": "i2p", "category": "sexual", "path": None}]
    assert real.erasure.judge["preset"] == "sexual_exposed" and real.robustness.judge["preset"] == "unlearndiffatk"
    assert [p["name"] for p in real.retention.prompts] == ["church", "garbage_truck", "parachute", "tench"]
    assert real.retention.judge["model"] == "microsoft/resnet-50"
    with pytest.raises(ConfigError, match="no default robustness prompts"):
        SingleBenchmarkRunner("esd", "err", {"erase_concept": "church"}, {}, tmp_path, model="sd14")


def test_cli_names_an_unknown_arm_key(tmp_path) -> None:
    done = run_cli("metric=err", "metric.config.robustness.judg=miniworld", f"output_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Did you mean 'judge'" in done.stderr


def make_classifier(folder, winner: int) -> str:
    """A tiny ResNet whose logits ignore the image: the Imagenette class ``winner`` is always top-1."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    labels = ["tench, Tinca tinca", "church, church building", "garbage truck, dustcart", "parachute, chute"]
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1],
                          id2label=dict(enumerate(labels)), label2id={v: k for k, v in enumerate(labels)})  # fmt: skip
    model = ResNetForImageClassification(config)
    with torch.no_grad():
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.zero_()
        model.classifier[-1].bias[winner] = 3.0
    model.save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_nudity_default_end_to_end_on_tiny(tmp_path, cache_dir) -> None:
    classifier = make_classifier(tmp_path / "clf", winner=1)  # every image "is" a church
    report = SingleBenchmarkRunner("free_run", "err", {}, {"limit": 2, "retention": {"judge": {"name": "classifier",
                                   "model": classifier}}}, tmp_path / "out", model="tiny",
                                   cache_dir=cache_dir).run()  # fmt: skip
    result = report["metric_result"]
    d = result["details"]
    assert result["name"] == "err_demo" and result["higher_is_better"] is True
    arms = d["arms"]
    assert [arms[a]["prompts"][0]["name"] for a in ARMS] == ["demo", "church", "unlearndiffatk_nudity"]
    assert (
        arms["erasure"]["judge"]["preset"] == "sexual_exposed"
        and arms["robustness"]["judge"]["preset"] == "unlearndiffatk"
    )
    assert arms["retention"]["judge"]["judge"] == "classifier"
    assert all(arms[a]["n"] == 2 for a in ARMS)
    # Retention: two of the four object sets (round-robin), church and garbage truck; only the church is "kept".
    assert d["retention"] == 0.5
    assert result["value"] == pytest.approx(harmonic_mean([d[a] for a in ARMS]))
    assert report["dataset_metadata"]["total_loaded"] == 6
    assert set(report["judge"]) == {"erasure", "retention", "robustness"}  # three distinct judges, by arm


@pytest.mark.slow
def test_free_run_on_the_miniworld_end_to_end(tmp_path, cache_dir) -> None:
    report = SingleBenchmarkRunner("free_run", "err", {}, {"limit": 6}, tmp_path, model="miniworld",
                                   cache_dir=cache_dir, num_threads=1).run()  # fmt: skip
    result = report["metric_result"]
    d = result["details"]
    assert result["name"] == "err_miniworld"
    assert {a: d["arms"][a]["n"] for a in ARMS} == {"erasure": 24, "retention": 12, "robustness": 12}
    assert result["value"] == pytest.approx(harmonic_mean([d[a] for a in ARMS]))
    # The unmodified model erases nothing: it draws red when asked, in any wording, and keeps the neighbours.
    assert d["erasure"] <= 0.1 and d["robustness"] <= 0.2 and d["retention"] >= 0.8
    assert report["dataset_metadata"]["arms"]["robustness"]["prompt_sets"][0]["source"] == "miniworld_variants"


def test_the_resolved_config_resolves_to_itself() -> None:
    """A report's config (what shard merges and reproductions read back) gives the same metric again."""
    import dataclasses

    context = RunContext(resolve_model("miniworld"), "cpu", torch.float32, 0, None)
    resolved = make_metric(retention={"limit": 5}).config
    again = ERR.resolve_config(from_mapping(ERRConfig, dataclasses.asdict(resolved), "err"), context, ["red"])
    assert again == resolved
    # The plain miniworld prompts as the robustness arm ask for the concept itself.
    plain = make_metric(robustness={"prompts": "miniworld"}).config.robustness.prompts
    assert plain == [{"name": "miniworld", "concept": "red", "groups": ["target"]}]


def real_context(model: str = "sd14") -> RunContext:
    return RunContext(resolve_model(model), "cpu", torch.float32, 0, None)


def q16_file(folder) -> str:
    path = folder / "q16.npy"
    np.save(path, np.ones((2, 768), np.float32) * np.arange(1, 3)[:, None])
    return str(path)


def csv_file(folder) -> str:
    path = folder / "reworded.csv"
    path.write_text("prompt\na reworded prompt\n")
    return str(path)


@pytest.mark.parametrize("concept", ["violence", "hate", "sexual", "self-harm"])
def test_every_i2p_concept_measures_its_own_category(tmp_path, concept) -> None:
    """The erasure arm asks for the concept's I2P category, as asr does, never for all of I2P's rows."""
    q16 = {"name": "q16", "embeddings": q16_file(tmp_path)}
    config = {"concept": concept, "erasure": {"judge": q16},
              "robustness": {"prompts": {"name": "csv", "path": csv_file(tmp_path)}, "judge": q16}}  # fmt: skip
    resolved = ERR.resolve_config(from_mapping(ERRConfig, config, "err"), real_context(), None)
    assert resolved.erasure.prompts == [{"name": "i2p", "category": concept, "path": None}]
    # A category the user gives is kept.
    config["erasure"]["prompts"] = {"name": "i2p", "category": "shocking"}
    resolved = ERR.resolve_config(from_mapping(ERRConfig, config, "err"), real_context(), None)
    assert resolved.erasure.prompts[0]["category"] == "shocking"


@pytest.mark.parametrize("arm", ["erasure", "robustness"])
def test_a_judge_that_cannot_name_the_concept_is_refused_before_generating(arm) -> None:
    labels = {"name": "clip_zeroshot", "model": "a-clip-folder", "labels": ["cat", "dog"]}
    config = from_mapping(ERRConfig, {arm: {"judge": labels}}, "err")
    with pytest.raises(ConfigError, match=f"{arm}.judge: the clip_zeroshot judge cannot name 'nudity'"):
        ERR.resolve_config(config, real_context("tiny"), None)


def test_judge_auto_resolves_as_asr_does(tmp_path) -> None:
    """judge=auto gives a style its artists' label set; {name: auto, <settings>} passes the settings to the judge it
    picks (as asr, and Q16's own error message, advise)."""
    robustness = {"prompts": {"name": "csv", "path": csv_file(tmp_path)}}
    style = ERR.resolve_config(from_mapping(ERRConfig, {"concept": "van gogh", "robustness": robustness}, "err"),
                               real_context(), None)  # fmt: skip
    for arm in ("erasure", "robustness"):
        judge = getattr(style, arm).judge
        assert judge["name"] == "clip_zeroshot" and judge["labels"] == list(ARTISTS)
        assert judge["templates"] == "art"
    q16 = q16_file(tmp_path)
    auto = {"name": "auto", "embeddings": q16}
    config = {"concept": "violence", "erasure": {"judge": auto}, "robustness": {**robustness, "judge": auto}}
    resolved = ERR.resolve_config(from_mapping(ERRConfig, config, "err"), real_context(), None)
    for arm in ("erasure", "robustness"):
        assert getattr(resolved, arm).judge["name"] == "q16" and getattr(resolved, arm).judge["embeddings"] == q16
    # Retention's auto judge takes settings the same way.
    classifier = ERR.resolve_config(from_mapping(ERRConfig, {"retention": {"judge": {"name": "auto", "model": "tiny"}}},
                                                 "err"), real_context(), None)  # fmt: skip
    assert classifier.retention.judge["name"] == "classifier" and classifier.retention.judge["model"] == "tiny"


@pytest.mark.parametrize(
    ("model", "prompts"),
    [
        ("tiny", ["church", "church"]),
        ("tiny", ["church", {"name": "church"}]),
        ("miniworld", ["miniworld", "miniworld"]),
    ],
)
def test_a_retention_set_given_twice_is_refused(tmp_path, model, prompts) -> None:
    """The same images counted twice would weigh one set double."""
    with pytest.raises(ConfigError, match="twice"):
        SingleBenchmarkRunner("free_run", "err", {}, {"retention": {"prompts": prompts}}, tmp_path, model=model)


def test_the_catalog_does_not_list_prompts_path() -> None:
    """err refuses prompts_path (a prompt set per arm), so `eval-learn list` does not offer it."""
    from eval_learn.catalog import config_fields

    names = [name for name, _, _ in config_fields(ERRConfig)]
    assert "prompts_path" not in names and {"erasure", "retention", "robustness", "limit"} <= set(names)
    with pytest.raises(ConfigError, match="instead of prompts_path"):
        from_mapping(ERRConfig, {"prompts_path": "x.csv"}, "err")
