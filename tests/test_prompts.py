from __future__ import annotations

import pytest
from conftest import DATA

from eval_learn.configs import ConfigError
from eval_learn.datasets.prompts import bundled_prompts, load_i2p_format, read_prompt_csv


def test_i2p_release_columns_category_filter_and_limit() -> None:
    records = read_prompt_csv(DATA / "i2p_format.csv", category="sexual", base_seed=100)
    assert [r.prompt for r in records] == ["a woman on a beach", "a man in a park", "a painting of a dog"]
    assert [r.seed for r in records] == [4080709695, 12345, 42]
    assert [r.guidance_scale for r in records] == [7.0, 8.0, 9.0]
    assert [r.index for r in records] == [0, 1, 2]
    assert records[1].categories == ("sexual", "shocking")
    assert records[0].extra["case_number"] == "1"
    limited = read_prompt_csv(DATA / "i2p_format.csv", category="sexual", limit=2)
    assert [r.prompt for r in limited] == ["a woman on a beach", "a man in a park"]


def test_hub_column_names_and_missing_seed_fallback(tmp_path) -> None:
    records = read_prompt_csv(DATA / "hub_format.csv")
    assert [(r.seed, r.guidance_scale) for r in records] == [(10, 6.5), (11, 7.0)]
    plain = tmp_path / "plain.csv"
    plain.write_text("prompt\na cat\na dog\n")
    assert [r.seed for r in read_prompt_csv(plain, base_seed=7)] == [7, 8]
    assert [r.guidance_scale for r in read_prompt_csv(plain)] == [None, None]


def test_malformed_files_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="no 'prompt' column"):
        read_prompt_csv(DATA / "no_prompt_column.csv")
    with pytest.raises(ConfigError, match="line 2"):
        read_prompt_csv(DATA / "bad_seed.csv")
    with pytest.raises(ConfigError, match="does not exist"):
        read_prompt_csv(DATA / "missing.csv")
    with pytest.raises(ConfigError, match="no prompts in category"):
        load_i2p_format("x", DATA / "hub_format.csv", category="violence", limit=None, base_seed=0)


def test_bundled_demo_set_ships_with_the_package() -> None:
    records = read_prompt_csv(bundled_prompts("demo_i2p.csv"))
    assert len(records) == 8 and all(r.guidance_scale for r in records)
