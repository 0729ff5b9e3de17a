"""Property-based tests over what people give eval_learn: prompt files, config values and run folders.

Every generated case either works or ends in one :class:`ConfigError` (one line, exit code 2): never another
exception (a traceback), and never a number computed from bad data. Example counts are kept so that the whole layer
runs in well under a minute on one core; ``--hypothesis-show-statistics`` prints how many cases each test ran.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eval_learn.app import build_runner
from eval_learn.datasets.base import build_dataset, name_from_path
from eval_learn.datasets.local_csv import CSVConfig, LocalCSV
from eval_learn.errors import ConfigError
from eval_learn.report import gather
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.settings import RunSettings
from eval_learn.shards import merge

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def one_line(err: ConfigError) -> None:
    text = str(err)
    assert text.strip() and "\n" not in text.strip() and "Traceback" not in text


# --- prompt files ----------------------------------------------------------------------------------------------------
ODD_CELLS = ["", " ", "nan", "inf", "-1", "1e400", "2**64", "18446744073709551616", "7.5", "0x10", "１２", '"', '""',
             ",", ";", "\t", "\n", "\r\n", "a,b", "\ufeff", "\x00"]  # fmt: skip
CELL = st.one_of(
    st.text(max_size=40),
    st.sampled_from(ODD_CELLS),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(min_size=5000, max_size=20000, alphabet="ab, "),  # a huge cell
)
COLUMNS = st.lists(st.sampled_from(["prompt", "Prompt", "evaluation_seed", "sd_seed", "seed", "guidance",
                                    "sd_guidance_scale", "evaluation_guidance", "categories", "case_number", "x", ""]),
                   min_size=1, max_size=5)  # fmt: skip
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"])
DELIMITERS = st.sampled_from([",", ";", "\t", "|"])
QUOTING = st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])


@FAST
@given(columns=COLUMNS, rows=st.lists(st.lists(CELL, min_size=1, max_size=5), max_size=6), encoding=ENCODINGS,
       delimiter=DELIMITERS, quoting=QUOTING, limit=st.one_of(st.none(), st.integers(1, 4)))  # fmt: skip
@pytest.mark.slow
def test_any_prompt_file_reads_into_valid_prompts_or_one_line(
    tmp_path_factory, columns, rows, encoding, delimiter, quoting, limit
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([str(c) for c in row])
    data = buffer.getvalue().encode(encoding, errors="replace")  # latin-1 cannot hold every letter: '?' instead
    path = tmp_path_factory.mktemp("prompts") / "prompts.csv"
    path.write_bytes(data)
    try:
        LocalCSV.preflight(CSVConfig(path=str(path)))
        dataset = build_dataset(LocalCSV(CSVConfig(path=str(path))), limit=limit, samples=1, base_seed=0)
    except ConfigError as err:
        one_line(err)
        return
    assert len(dataset) >= 1
    for record in dataset.records:
        assert isinstance(record.prompt, str) and record.prompt.strip()
        assert isinstance(record.seed, int) and 0 <= record.seed < 2**64
        guidance = getattr(record, "guidance_scale", None)
        assert guidance is None or isinstance(guidance, float) and math.isfinite(guidance)


@FAST
@given(stem=st.text(max_size=80))
def test_a_prompt_file_name_becomes_a_safe_name(stem: str) -> None:
    name = name_from_path(f"/data/{stem.replace('/', '_')}.csv")
    assert name and len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


# --- config values ---------------------------------------------------------------------------------------------------
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from(["on", "off", "read_only", "auto", "cpu", "float32", "", "0", "-1"]),
)  # fmt: skip
SETTING_FIELDS = [f for f in RunSettings.__dataclass_fields__ if f not in ("cache_dir", "device")]
TECHNIQUE_FIELDS = ["learning_rate", "train_steps", "train_method", "erase_concept", "guidance_scale",
                    "num_inference_steps", "negative_guidance", "use_cache", "save_path"]  # fmt: skip
METRIC_FIELDS = ["limit", "concept", "samples_per_prompt", "prompts", "judge", "device", "prompts_path"]


@FAST
@given(where=st.sampled_from(["settings", "technique", "metric"]), field=st.data(), value=ANY_VALUE)
def test_any_config_value_builds_a_runner_or_one_line(tmp_path_factory, where, field, value) -> None:
    run: dict[str, Any] = {"technique": {"name": "esd", "config": {}}, "metric": {"name": "asr", "config": {}},
                           "model": "tiny", "output_dir": str(tmp_path_factory.mktemp("out")),
                           "cache_dir": str(tmp_path_factory.mktemp("cache"))}  # fmt: skip
    if where == "settings":
        run[field.draw(st.sampled_from(SETTING_FIELDS))] = value
    else:
        name = field.draw(st.sampled_from(TECHNIQUE_FIELDS if where == "technique" else METRIC_FIELDS))
        run[where]["config"][name] = value
    try:
        build_runner(run)
    except ConfigError as err:
        one_line(err)


# --- run folders -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shard_runs(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("runs")
    whole = SingleBenchmarkRunner("free_run", "asr", {}, {"limit": 3}, root / "whole", model="tiny",
                                  cache_dir=root / "cache").run()  # fmt: skip
    for index in range(2):
        SingleBenchmarkRunner("free_run", "asr", {}, {"limit": 3}, root / "shards", model="tiny",
                              cache_dir=root / "cache", shard={"index": index, "count": 2}).run()  # fmt: skip
    return root, whole


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors"))


DAMAGE = st.sampled_from(["truncate", "flip", "empty", "duplicate_folder", "foreign_file", "foreign_report"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=DAMAGE, pick=st.integers(0, 10**6), cut=st.floats(0, 1, exclude_max=True),
       junk=st.binary(max_size=200))  # fmt: skip
@pytest.mark.slow
def test_a_damaged_run_folder_gives_the_true_value_or_one_line(
    shard_runs, tmp_path_factory, damage, pick, cut, junk
) -> None:
    source, whole = shard_runs
    root = tmp_path_factory.mktemp("case")
    shutil.copytree(source / "shards", root / "shards")
    shutil.copytree(source / "whole", root / "whole")
    files = _files(root)
    target = files[pick % len(files)]
    changed = True
    if damage == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[: int(len(data) * cut)])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[int(len(data) * cut)] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "duplicate_folder":  # a copied run folder: the same files twice
        run = next((root / "shards").iterdir())
        shutil.copytree(run, root / "shards" / f"copy_of_{run.name}")
        changed = False
    elif damage == "foreign_file":
        (target.parent / f"foreign_{pick}.json").write_bytes(junk)
        changed = False
    else:
        (root / "shards" / "foreign" / "report.json").parent.mkdir(parents=True)
        (root / "shards" / "foreign" / "report.json").write_bytes(junk or b"{}")
        changed = False
    expected = whole["metric_result"]
    try:
        (merged,) = merge([root / "shards"], tmp_path_factory.mktemp("merged"))
    except ConfigError as err:
        one_line(err)
        changed_shard = changed and (root / "shards") in target.parents
        assert changed_shard or damage == "duplicate_folder", f"{damage} of {target} refused: {err}"
    else:
        assert merged["metric_result"] == expected  # a value from these shards is the true one
    board = gather(root / "whole")
    values = [r.results for r in board.rows]
    if changed and target.name == "report.json" and (root / "whole") in target.parents:
        assert values == []  # the damaged report is listed, not counted
        assert [s.path for s in board.malformed] == [target]
    else:  # a damaged status file or image record: the run is listed as unfinished, or still gives its true value
        assert [next(iter(v.values())).value for v in values] in ([], [expected["value"]])
    json.dumps(board.csv())
