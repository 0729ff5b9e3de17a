"""UA/IRA: a hand-computed case on drawn MiniWorld images (the real judge reads them), and the metric contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metric_contract import check_metric_contract
from PIL import Image

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.metrics.intervals import wilson_interval
from eval_learn.metrics.ua_ira import UAIRA, UAIRAConfig
from eval_learn.miniworld.world import Scene, render
from eval_learn.runtime import RunContext


def make_metric(**config) -> UAIRA:
    context = RunContext(resolve_model("miniworld"), "cpu", torch.float32, 0, None)
    return UAIRA(UAIRA.resolve_config(from_mapping(UAIRAConfig, config, "ua_ira"), context, ["red"]), context)


def drawn(records, colour_for) -> list[Image.Image]:
    """A plain-background render per record, in the colour ``colour_for(record)`` (what the model 'drew')."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(render(Scene(colour_for(r), r.extra["shape"], "plain"), rng)) for r in records]


def test_hand_computed_case_judged_by_group_not_by_position() -> None:
    metric = make_metric(limit=6)
    records = metric.load_dataset().records  # 6 prompts over target, near and far (stratified), 4/2/2 samples
    groups = [r.extra["group"] for r in records]
    assert set(groups) == {"target", "near", "far"}
    # The "model" erased red perfectly (red prompts come out green) but turned every near-neighbour prompt yellow.
    images = drawn(records, lambda r: {"target": "green", "near": "yellow"}.get(r.extra["group"], r.extra["colour"]))
    batch = list(range(len(records)))[::-1]  # judged in reverse order: positions must not matter
    metric.update([images[i] for i in batch], [records[i] for i in batch])
    details = metric.compute().details
    assert details["ua"] == 1.0 and details["ira_near"] == 0.0 and details["ira_far"] == 1.0
    far, near = groups.count("far"), groups.count("near")
    assert details["ira"] == pytest.approx(far / (far + near))
    assert metric.compute().value == pytest.approx((1.0 + far / (far + near)) / 2)
    assert details["ci95_wilson"]["ira_pooled"] == wilson_interval(far, far + near)  # every rate has its interval
    assert details["ci95_wilson"]["ua"] == wilson_interval(groups.count("target"), groups.count("target"))
    assert metric.compute().name == "ua_ira_miniworld"


def test_batches_restores_and_shards_give_the_same_value(tmp_path) -> None:
    records = make_metric(limit=6).load_dataset().records
    images = drawn(records, lambda r: r.extra["colour"] if r.index % 3 else "orange")
    check_metric_contract(lambda: make_metric(limit=6), images, records, tmp_path)


# --- real models: target/retain prompt files judged by CLIP zero-shot -------------------------------------------------

TARGET = "prompt,style,evaluation_seed\nA tree in Van Gogh style,Van Gogh,11\nA dog in Van Gogh style,,12\n"
RETAIN = (
    "prompt,style,evaluation_seed\nA tree in Monet style,Claude Monet,21\nA dog in Monet style,Claude Monet,22\n"
    "A car in Picasso style,Pablo Picasso,23\n"
)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> str:
    from eval_learn.judges.tiny import write_tiny_clip

    return str(write_tiny_clip(tmp_path_factory.mktemp("clip")))


@pytest.fixture
def files(tmp_path) -> dict:
    (tmp_path / "vangogh_target.csv").write_text(TARGET)
    (tmp_path / "retain.csv").write_text(RETAIN)
    return {"name": "target_retain", "target": str(tmp_path / "vangogh_target.csv"),
            "retain": str(tmp_path / "retain.csv"), "label_column": "style"}  # fmt: skip


def make_file_metric(files: dict, clip_folder: str, **config) -> UAIRA:
    context = RunContext(resolve_model("tiny"), "cpu", torch.float32, 0, None)
    config = {"prompts": files, "judge": {"name": "clip_zeroshot", "model": clip_folder}, "concept": "van gogh",
              "target_samples_per_prompt": 2, "retain_samples_per_prompt": 1, **config}  # fmt: skip
    return UAIRA(UAIRA.resolve_config(from_mapping(UAIRAConfig, config, "ua_ira"), context, None), context)


def verdict(label: str, labels: list[str]) -> dict:
    return {"label": label, "probs": {x: float(x == label) for x in labels}, "logit_scale": 100.0}


def test_files_hand_computed_case_judged_by_record_not_position(files, clip_folder) -> None:
    metric = make_file_metric(files, clip_folder)
    labels = metric.config.judge["labels"]
    assert labels == ["van gogh", "Claude Monet", "Pablo Picasso"]  # the concept, then the files' labels
    records = metric.load_dataset().records  # 2 target prompts x 2 samples, then 3 retain prompts x 1
    assert [(r.extra["group"], r.extra["label"]) for r in records] == [("target", "Van Gogh")] * 2 + [
        ("target", None)] * 2 + [("retain", "Claude Monet")] * 2 + [("retain", "Pablo Picasso")]  # fmt: skip
    # What the zero-shot judge "saw": target 0 still Van Gogh, the other three targets Monet; the Monet retain
    # images are Monet and Van Gogh, the Picasso one Picasso. Fed in reverse order: positions must not matter.
    seen = ["van gogh", "Claude Monet", "Claude Monet", "Claude Monet", "Claude Monet", "van gogh", "Pablo Picasso"]
    for i in reversed(range(len(records))):
        metric.judgements.add(i, metric.record({"judge": verdict(seen[i], labels)}, records[i]))
    result = metric.compute()
    d = result.details
    # IRA averages the labels' accuracies (UnlearnCanvas): Monet 1/2 and Picasso 1/1 -> 3/4; pooled over images 2/3.
    assert d["ua"] == 3 / 4 and d["ira"] == 3 / 4 and result.value == pytest.approx((3 / 4 + 3 / 4) / 2)
    assert d["ira_pooled"] == 2 / 3
    assert d["ira_per_label"] == {"Claude Monet": 0.5, "Pablo Picasso": 1.0}
    assert d["target_predicted_labels"] == {"Claude Monet": 3, "van gogh": 1}
    assert d["ci95_wilson"]["ua"] == wilson_interval(3, 4) and d["ci95_wilson"]["ira_pooled"] == wilson_interval(2, 3)
    assert d["ci95_wilson"]["ira[Pablo Picasso]"] == wilson_interval(1, 1)
    assert result.name == "ua_ira_vangogh_target" and UAIRA.higher_is_better is True
    assert d["judge"]["labels"] == labels and d["judge"]["templates"] == ["a photo of {}."]


def test_files_contract_and_batches_with_mixed_groups(files, clip_folder, tmp_path) -> None:
    metric = make_file_metric(files, clip_folder)
    records = metric.load_dataset().records
    images = [Image.fromarray(np.random.RandomState(i).randint(0, 256, (40, 40, 3), dtype=np.uint8))
              for i in range(len(records))]  # fmt: skip
    check_metric_contract(lambda: make_file_metric(files, clip_folder), images, records, tmp_path)
    # Batches that mix target and retain images: each image is filed under its own record's group and label.
    metric.update(images[3:6], records[3:6])
    metric.update(images[:3] + images[6:], records[:3] + records[6:])
    for record, entry in zip(records, metric.judgements.sorted(), strict=True):
        assert entry["group"] == record.extra["group"]
        assert entry["label"] == (record.extra["label"] or "van gogh")


def test_files_bad_configs(files, clip_folder, tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs both files"):
        make_file_metric({"name": "target_retain", "target": files["target"]}, clip_folder)
    with pytest.raises(ConfigError, match="no 'label' column"):
        make_file_metric({**files, "label_column": "label"}, clip_folder)
    with pytest.raises(ConfigError, match="cannot name 'Pablo Picasso'"):
        make_file_metric(files, clip_folder, judge={"name": "clip_zeroshot", "model": clip_folder,
                                                    "labels": ["Van Gogh", "Claude Monet"]})  # fmt: skip
    with pytest.raises(ConfigError, match="judged by CLIP zero-shot"):
        make_file_metric(files, clip_folder, judge="miniworld")
    (tmp_path / "bad_retain.csv").write_text("prompt,style\nA tree,Van Gogh\n")
    with pytest.raises(ConfigError, match="ask for the erased concept"):
        make_file_metric({**files, "retain": str(tmp_path / "bad_retain.csv")}, clip_folder)
    with pytest.raises(ConfigError, match="target_retain"):  # a real model without files: told what to give
        make_file_metric("auto", clip_folder)


def test_files_target_labels_must_name_the_erased_concept(files, clip_folder, tmp_path) -> None:
    # A synonym would become a competing class: an image whose argmax is "Vincent van Gogh" would count as erased.
    (tmp_path / "synonym.csv").write_text("prompt,style\nA tree by Vincent,Vincent van Gogh\nA starry night,\n")
    with pytest.raises(ConfigError, match=r"must ask for the erased concept 'van gogh'.*line 2: 'Vincent van Gogh'"):
        make_file_metric({**files, "target": str(tmp_path / "synonym.csv")}, clip_folder)
    # A target file about another concept is not silently measured as if it asked for the erased one.
    (tmp_path / "monet.csv").write_text("prompt,style\nA pond,Claude Monet\nA bridge,Claude Monet\n")
    with pytest.raises(ConfigError, match="line 2: 'Claude Monet', line 3: 'Claude Monet'"):
        make_file_metric({**files, "target": str(tmp_path / "monet.csv")}, clip_folder)
    # Case and underscores aside the label is the concept; the label set is the concept plus the retain labels only.
    (tmp_path / "spelled.csv").write_text("prompt,style\nA tree,Van_Gogh\nA dog,\n")
    metric = make_file_metric({**files, "target": str(tmp_path / "spelled.csv")}, clip_folder)
    assert metric.config.judge["labels"] == ["van gogh", "Claude Monet", "Pablo Picasso"]


@pytest.mark.slow
def test_files_end_to_end_on_tiny(files, clip_folder, tmp_path, cache_dir) -> None:
    from eval_learn.runners import SingleBenchmarkRunner

    config = {"prompts": files, "concept": "van gogh", "judge": {"name": "clip_zeroshot", "model": clip_folder},
              "target_samples_per_prompt": 1, "retain_samples_per_prompt": 1}  # fmt: skip
    report = SingleBenchmarkRunner("free_run", "ua_ira", {}, config, tmp_path, model="tiny", cache_dir=cache_dir).run()
    result = report["metric_result"]
    assert result["name"] == "ua_ira_vangogh_target" and result["higher_is_better"] is True
    assert result["details"]["target_total"] == 2 and result["details"]["retain_total"] == 3
    assert report["judge"]["judge"] == "clip_zeroshot"
