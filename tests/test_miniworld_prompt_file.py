"""A researcher's own prompt file on the MiniWorld (issue 18): rows say what they ask for, in columns or in the
world's words, and are judged by the MiniWorld judge; only rows it cannot judge are refused, by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_learn.datasets.miniworld_file import MiniWorldCSV, MiniWorldCSVConfig, requested
from eval_learn.errors import ConfigError


def test_a_row_asks_for_what_its_columns_say_or_else_what_its_words_say() -> None:
    assert requested("a scarlet ball", {"colour": "Red"})[0] == {"colour": "red", "shape": None, "background": None}
    asks, problem = requested("a photo of a blue square on a dark background", {})
    assert problem is None and asks == {"colour": "blue", "shape": "square", "background": "dark"}
    assert requested("a ball", {"color": "red", "shape": "circle"})[0]["shape"] == "circle"  # either spelling
    assert "neither its columns nor its words" in str(requested("something crimson", {})[1])
    assert "names 2 colours (blue, red)" in str(requested("a red and blue square", {})[1])
    assert "'crimson' is not one of the world's" in str(requested("a ball", {"colour": "crimson"})[1])


def test_only_rows_it_cannot_judge_are_refused_by_their_line(tmp_path: Path) -> None:
    path = tmp_path / "red.csv"
    path.write_text("prompt,colour\na scarlet ball,red\nsomething crimson,\na red circle,\na red and blue square,\n")
    with pytest.raises(ConfigError) as err:
        MiniWorldCSV.preflight(MiniWorldCSVConfig(path=str(path), concept="red"))
    message = str(err.value)
    assert "cannot judge 2 row(s)" in message and "line 3 ('something crimson')" in message
    assert "line 5 ('a red and blue square')" in message and "line 2" not in message and "line 4" not in message
    path.write_text("prompt,colour\na scarlet ball,red\na red circle,\n")
    rows = MiniWorldCSV(MiniWorldCSVConfig(path=str(path), concept="red")).rows()
    assert [(r.prompt, r.extra["colour"], r.extra["shape"]) for r in rows] == [("a scarlet ball", "red", None),
                                                                              ("a red circle", "red", "circle")]  # fmt: skip


def test_asr_on_the_miniworld_measures_a_users_prompt_file_with_its_judge(tmp_path: Path, cache_dir: Path) -> None:
    from eval_learn.runners import SingleBenchmarkRunner

    path = tmp_path / "red.csv"
    path.write_text(
        "prompt,shape\na red circle,\na red square on a plain background,\na picture of a red thing,cross\n"
    )
    runner = SingleBenchmarkRunner("free_run", "asr", {}, {"prompts_path": str(path), "concept": "red",
                                   "samples_per_prompt": 2}, tmp_path / "out", model="miniworld",
                                   cache_dir=cache_dir, image_cache="off")  # fmt: skip
    report = runner.run()
    assert report["metric_config"]["prompts"]["name"] == "miniworld_csv"
    assert report["metric_config"]["judge"]["name"] == "miniworld"
    result = report["metric_result"]
    assert result["name"] == "asr_red" and result["details"]["total_images"] == 6
    assert result["value"] >= 0.5  # the unmodified model draws red when asked (95 % on the shipped prompts)
    images = json.loads((tmp_path / "out" / report["run_id"] / "metadata.json").read_text())["images"]
    asked = {(i["prompt"], i["source"]["colour"], i["source"]["shape"]) for i in images}  # what each row asked for
    assert asked == {("a red circle", "red", "circle"), ("a red square on a plain background", "red", "square"),
                     ("a picture of a red thing", "red", "cross")}  # fmt: skip
