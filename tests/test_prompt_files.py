"""Prompt files as people save them, and what every prompt set shares: limit by whole prompts over strata, seeds
that belong to prompts, samples per prompt."""

from __future__ import annotations

import pytest
from conftest import DATA

from eval_learn.configs import ConfigError
from eval_learn.datasets.base import PromptRow, build_dataset, prompt_seed, select
from eval_learn.datasets.i2p import I2P, I2PConfig, bundled_prompts
from eval_learn.datasets.local_csv import CSVConfig, LocalCSV
from eval_learn.datasets.miniworld import MiniWorldPrompts, MiniWorldPromptsConfig
from eval_learn.datasets.tables import prompt_rows, read_table


def rows(path, **kwargs) -> list[PromptRow]:
    return prompt_rows(read_table(path), **kwargs)


def test_i2p_release_columns_and_category_filter() -> None:
    kept = rows(DATA / "i2p_format.csv", category="sexual")
    assert [r.prompt for r in kept] == ["a woman on a beach", "a man in a park", "a painting of a dog"]
    assert [r.seed for r in kept] == [4080709695, 12345, 42]
    assert [r.guidance_scale for r in kept] == [7.0, 8.0, 9.0]
    assert kept[1].categories == ("sexual", "shocking")
    assert kept[0].extra["case_number"] == "1"


def test_hub_column_names_and_seed_fallback(tmp_path) -> None:
    assert [(r.seed, r.guidance_scale) for r in rows(DATA / "hub_format.csv")] == [(10, 6.5), (11, 7.0)]
    plain = tmp_path / "plain.csv"
    plain.write_text("prompt\na cat\na dog\n")
    dataset = build_dataset(LocalCSV(CSVConfig(path=str(plain))), limit=None, samples=1, base_seed=7)
    assert [r.seed for r in dataset.records] == [prompt_seed(7, "a cat"), prompt_seed(7, "a dog")]
    assert [r.guidance_scale for r in dataset.records] == [None, None]


@pytest.mark.parametrize(
    ("content", "encoding"),
    [
        ("prompt,sd_seed\na cat,1\na dog,2\n", "utf-8-sig"),  # Excel's byte-order mark
        ("prompt;sd_seed\na cat;1\na dog;2\n", "utf-8"),  # semicolons (a European Excel)
        ("prompt\tsd_seed\na cat\t1\na dog\t2\n", "utf-8"),  # tab-separated
        (" Prompt , SD Seed \na cat,1\na dog,2\n", "utf-8"),  # header names with case and spaces
        ("prompt,sd_seed\r\na cat,1\r\n\r\na dog,2\r\n", "utf-8"),  # Windows line ends, a blank line
    ],
)
def test_files_as_people_save_them(tmp_path, content, encoding) -> None:
    path = tmp_path / "prompts.csv"
    path.write_bytes(content.encode(encoding))
    assert [(r.prompt, r.seed) for r in rows(path)] == [("a cat", 1), ("a dog", 2)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"prompt,categories,sd_seed\na cat,sexual,ten\n", "line 2: seed 'ten' is not a number"),
        (b"prompt,sd_seed\na cat,-1\n", "outside the generator's range"),
        (b"prompt,sd_seed\na cat,18446744073709551616\n", "outside the generator's range"),
        (b"prompt,sd_guidance_scale\na cat,nan\n", "finite number"),
        (b"prompt,sd_seed,prompt\na,1,b\n", "has 2 'prompt' columns (columns [1, 3])"),
        ("prompt\ncaf\u00e9 au lait\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 2)"),
        (b"text,seed\na cat,1\n", "has no 'prompt' column"),
        (b"prompt\na cat, sitting,1\n", "line 2: 3 fields for 1 columns"),
        (b"prompt,sd_seed\n ,5\n", "line 2: empty prompt"),
        (b"", "is empty or has no header"),
        (b'prompt,seed\n"a red circle,1\n', "line 2: not a readable CSV file (unexpected end of data)"),  # unclosed
    ],
)
def test_malformed_files_fail_with_the_line_and_the_fix(tmp_path, content, message) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        rows(path)


def test_missing_files_folders_and_filters_the_file_cannot_support(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="is a folder"):
        read_table(tmp_path)
    plain = tmp_path / "plain.csv"
    plain.write_text("prompt\na cat\n")
    with pytest.raises(ConfigError, match="no 'categories' column"):
        LocalCSV.preflight(CSVConfig(path=str(plain), category="sexual"))
    with pytest.raises(ConfigError, match="no prompts in category 'violence'"):
        LocalCSV.preflight(CSVConfig(path=str(DATA / "hub_format.csv"), category="violence"))
    I2P.preflight(I2PConfig(category="sexual", path=str(DATA / "i2p_format.csv")))


def test_limit_keeps_whole_prompts_from_every_stratum() -> None:
    red = MiniWorldPrompts(MiniWorldPromptsConfig(concept="red"))
    kept = select(red.rows(), 4)
    assert sorted(r.extra["shape"] for r in kept) == ["circle", "cross", "square", "triangle"]
    everything = MiniWorldPrompts(MiniWorldPromptsConfig(concept="red", groups=["target", "near", "far"]))
    assert {r.extra["group"] for r in select(everything.rows(), 3)} == {"target", "near", "far"}
    dataset = build_dataset(red, limit=2, samples=3, base_seed=100)
    assert len(dataset) == 6 and dataset.metadata["prompts"] == 2 and dataset.metadata["total_loaded"] == 6
    first, second = (prompt_seed(100, r.prompt) for r in dataset.records[::3])
    assert [r.seed for r in dataset.records] == [first, first + 1, first + 2, second, second + 1, second + 2]
    assert [r.extra["sample"] for r in dataset.records] == [0, 1, 2, 0, 1, 2]
    assert [r.index for r in dataset.records] == list(range(6))


def test_a_prompt_gets_the_same_seeds_in_every_set_and_repeats_get_new_ones(tmp_path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("prompt\na cat\na dog\na cat\n")
    records = build_dataset(LocalCSV(CSVConfig(path=str(path))), limit=None, samples=1, base_seed=0).records
    assert records[0].seed == prompt_seed(0, "a cat") and records[2].seed == prompt_seed(0, "a cat", 1)
    assert len({r.seed for r in records}) == 3
    other = tmp_path / "q.csv"
    other.write_text("prompt\na dog\n")
    assert (
        build_dataset(LocalCSV(CSVConfig(path=str(other))), limit=None, samples=1, base_seed=0).records[0].seed
        == records[1].seed
    )


def test_samples_of_a_prompt_with_its_own_seed() -> None:
    demo = I2P(I2PConfig(path=str(bundled_prompts("demo_i2p.csv"))))
    dataset = build_dataset(demo, limit=1, samples=3, base_seed=0)
    assert [r.seed for r in dataset.records] == [1001, 1002, 1003]  # the prompt's seed s, s+1, s+2
    assert [r.index for r in dataset.records] == [0, 1, 2]


def test_bundled_sets_ship_with_the_package() -> None:
    assert len(rows(bundled_prompts("demo_i2p.csv"))) == 8
    assert len(rows(bundled_prompts("unlearndiffatk_nudity.csv"))) == 142


def test_doubled_quotes_under_a_header_without_quotes(tmp_path) -> None:
    """RFC 4180 escapes a quote inside a quoted field by doubling it (COCO: A ""Virgin Records"" train); a header line
    without quotes must not make the reader guess that doubling is off."""
    path = tmp_path / "captions.csv"
    path.write_bytes(b'case_number,prompt,evaluation_seed\r\n1,"A ""Virgin Records"" train, red",7\r\n2,a dog,8\r\n')
    assert [(r.prompt, r.seed) for r in rows(path)] == [('A "Virgin Records" train, red', 7), ("a dog", 8)]
