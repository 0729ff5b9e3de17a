"""UA/IRA: a hand-computed case on drawn MiniWorld images (the real judge reads them), and the metric contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metric_contract import check_metric_contract
from PIL import Image

from eval_learn.configs import from_mapping
from eval_learn.metrics.ua_ira import UAIRA, UAIRAConfig
from eval_learn.miniworld.world import Scene, render
from eval_learn.models import resolve_model
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


def test_batches_restores_and_shards_give_the_same_value(tmp_path) -> None:
    records = make_metric(limit=6).load_dataset().records
    images = drawn(records, lambda r: r.extra["colour"] if r.index % 3 else "orange")
    check_metric_contract(lambda: make_metric(limit=6), images, records, tmp_path)
