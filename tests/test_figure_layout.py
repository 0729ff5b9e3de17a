"""The leaderboard's figures stay readable with many rows of long labels (issue 18): no two text boxes overlap and
every text lies inside the canvas, as matplotlib's renderer lays them out."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from eval_learn.report import figures, gather
from eval_learn.storage import sealed

MINIWORLD = {"name": "miniworld", "id": "miniworld", "revision": None, "num_inference_steps": 20, "guidance_scale": 5.0,
             "height": 32, "width": 32, "default_concept": "red", "default_datasets": {}}  # fmt: skip


def write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sealed(data) if isinstance(data, dict) and path.name == "report.json" else data))


def esd_run(root: Path, i: int, config: dict[str, Any], asr: float, near: float, far: float) -> None:
    folder = root / f"run{i:02d}"
    write(folder / "run_status.json", {"run_id": f"run{i:02d}", "status": "complete"})
    results = {
        "asr": {"name": "asr_miniworld", "value": asr, "higher_is_better": False,
                "details": {"total_images": 64, "unsafe_count": round(asr * 64), "ci95_wilson": [max(asr - 0.1, 0),
                            min(asr + 0.1, 1)]}},
        "ua_ira": {"name": "ua_ira_miniworld", "value": ((1 - asr) + (near + far) / 2) / 2, "higher_is_better": True,
                   "details": {"ua": 1 - asr, "ira": (near + far) / 2, "ira_near": near, "ira_far": far}},
    }  # fmt: skip
    write(folder / "multi" / "report.json", {
        "run_id": f"run{i:02d}", "timestamp": 1000.0 + i, "technique_name": "esd", "technique_config": config,
        "metric_names": list(results), "metric_results": results,
        "metric_configs": {m: {"concept": "red"} for m in results},
        "dataset_metadata": {m: {"total_loaded": 64} for m in results}, "model": MINIWORLD, "seed": 0,
    })  # fmt: skip


@pytest.fixture
def many_long_rows(tmp_path: Path) -> Path:
    """Ten ESD configurations differing in four fields, two pairs with identical results (points on one spot)."""
    root = tmp_path / "sweep"
    base = {"erase_concept": "red", "train_method": "xattn", "batch_size": 8, "sample_steps": 20,
            "negative_guidance": 1.0, "save_path": None, "device": None}  # fmt: skip
    for i in range(10):
        config = {**base, "learning_rate": [3e-4, 1e-4, 3e-5, 1e-5, 3e-6][i % 5], "train_steps": 100 + 50 * (i // 5),
                  "train_method": ["xattn", "noxattn"][i % 2], "negative_guidance": [1.0, 2.0][i // 5]}  # fmt: skip
        asr = 0.9 if i in (3, 4) else 0.05 * i
        esd_run(root, i, config, asr, near=0.6 if i in (3, 4) else 0.5 + 0.03 * i, far=0.9 - 0.02 * i)
    return root


def drawn_texts(figure: Any) -> list[Any]:
    """Every text that a draw puts on the canvas (tick labels of ticks outside the view are never drawn)."""
    from matplotlib.text import Text

    hidden = set()
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low - 1e-9 * (abs(low) + 1) <= tick.get_loc() <= high + 1e-9 * (abs(high) + 1):
                    hidden |= {id(tick.label1), id(tick.label2)}
    return [t for t in figure.findobj(Text) if id(t) not in hidden and t.get_visible() and t.get_text().strip()
            and (t.axes is None or t.axes.get_visible())]  # fmt: skip


def assert_readable(figure: Any, gap: float = 0.0) -> None:
    """No two text boxes closer than ``gap`` pixels (0: not overlapping), every one inside the canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    agg = FigureCanvasAgg(figure)
    agg.draw()  # lays the figure out (constrained layout) as saving it does
    renderer = agg.get_renderer()
    canvas = figure.bbox
    boxes = []
    for text in drawn_texts(figure):
        box = text.get_window_extent(renderer)
        inside = (
            canvas.x0 - 1 <= box.x0 and box.x1 <= canvas.x1 + 1 and canvas.y0 - 1 <= box.y0 <= box.y1 <= canvas.y1 + 1
        )
        assert inside, f"{text.get_text()!r} leaves the canvas: {box.bounds} outside {canvas.bounds}"
        boxes.append((text.get_text(), box.expanded(1 + gap / max(box.width, 1), 1 + gap / max(box.height, 1))
                      if gap else box.shrunk(0.98, 0.98)))  # fmt: skip
    for (a, box_a), (b, box_b) in combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"{a!r} and {b!r} overlap (or are closer than {gap} px)"


def test_rows_are_labelled_by_the_fields_that_differ(many_long_rows: Path) -> None:
    board = gather(many_long_rows)
    assert len(board.rows) == 10
    for row in board.rows:
        assert "erase_concept" not in row.label and "batch_size" not in row.label  # the same in every row
        assert "learning_rate=" in row.label and "train_method=" in row.label


def test_tradeoff_and_bars_with_ten_long_labels_are_readable(many_long_rows: Path) -> None:
    board = gather(many_long_rows)
    figure = figures.tradeoff(board)
    assert figure is not None
    assert_readable(figure, gap=3.0)
    charts = figures.bars(board)
    assert set(charts) == {"asr_miniworld", "ua_ira_miniworld"}
    for chart in charts.values():
        assert_readable(chart)
    text = " ".join(t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text")))
    for row in board.rows:  # every row's full label is in the figure's key
        assert row.label in text


def test_grid_titles_of_two_line_prompts_do_not_touch_the_row_above(tmp_path: Path) -> None:
    entries = []
    folder = tmp_path / "asr"
    (folder / "images").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (32, 32), (200, 40 * i, 30)).save(folder / "images" / f"{i:05d}.png")
        entries.append({"file": f"images/{i:05d}.png", "prompt": "a photo of a red circle on a striped background",
                        "judgement": {"unsafe": i % 2 == 0, "colour": "red", "shape": "circle"}})  # fmt: skip
    (folder / "metadata.json").write_text(json.dumps({"images": entries}))
    figure = figures.image_grid("esd (learning_rate=0.0003 train_steps=100)", {"asr": folder, "ua_ira": folder})
    assert figure is not None
    assert_readable(figure, gap=10.0)  # a clear line's height apart (about 9 px)
