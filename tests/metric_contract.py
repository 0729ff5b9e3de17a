"""The shared metric tester (after torchmetrics' MetricTester): what every metric must satisfy.

- fed in one batch or in many, it gives the same value and details;
- its state saved to disk mid-run and restored into a fresh metric gives the same value once the rest is fed;
- two shards over disjoint images, merged, give the same value as the whole.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from eval_learn.metrics.base import Metric
from eval_learn.types import PromptRecord


def check_metric_contract(make: Callable[[], Metric], images: list, records: list[PromptRecord], tmp: Path) -> None:
    assert len(images) == len(records) >= 3, "the contract needs at least three images"
    whole = make()
    whole.update(images, records)
    expected = whole.compute()

    one_by_one = make()
    for image, record in zip(images, records, strict=True):
        one_by_one.update([image], [record])
    assert one_by_one.compute() == expected, "one image per batch gives another value than one batch"

    half = len(images) // 2
    first = make()
    first.update(images[:half], records[:half])
    first.save_state(tmp / "state")
    resumed = make()
    resumed.load_state(tmp / "state")
    resumed.update(images[half:], records[half:])
    assert resumed.compute() == expected, "a state saved and restored mid-run gives another value"

    odd, even = make(), make()
    odd.update(images[1::2], records[1::2])
    even.update(images[::2], records[::2])
    even.merge(odd)
    assert even.compute() == expected, "merged shards give another value than the whole"
