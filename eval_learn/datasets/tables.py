"""Prompt files as people save them: CSV or TSV, comma or semicolon, with or without Excel's byte-order mark.

Read once, checked whole at construction (before any model loads): a file that cannot be read as prompts gets one
message naming the file, the line and what to change, never a traceback. Header names are compared without case
and surrounding spaces (``" Prompt "`` is ``prompt``, ``sd seed`` is ``sd_seed``).

Columns understood: ``prompt``; the per-prompt seed (``sd_seed`` as on the I2P hub copy, ``evaluation_seed`` as in
the UnlearnDiffAtk release, or ``seed``); the guidance scale (``sd_guidance_scale``, ``evaluation_guidance``,
``guidance_scale``); ``categories`` (comma-separated, I2P's); and a few kept for the record (``case_number``, image
width and height, an object class or artist).
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from eval_learn.datasets.base import PromptRow, check_seed
from eval_learn.errors import ConfigError
from eval_learn.guidance import check_guidance_scale

SEED_COLUMNS = ("sd_seed", "evaluation_seed", "seed")
GUIDANCE_COLUMNS = ("sd_guidance_scale", "evaluation_guidance", "guidance_scale")
KEPT_COLUMNS = ("case_number", "sd_image_width", "sd_image_height", "class", "artist", "label")
READ_COLUMNS = ("prompt", "categories", *SEED_COLUMNS, *GUIDANCE_COLUMNS)


def normalise(name: str) -> str:
    return "_".join(name.strip().lower().split())


@dataclass(frozen=True)
class Table:
    path: str
    header: tuple[str, ...]
    rows: tuple[tuple[int, dict[str, str]], ...]  # (line number, normalised column → value)

    def has(self, column: str) -> bool:
        return column in self.header


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")  # strips Excel's byte-order mark
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); save it as UTF-8 "
            f"(in Excel: 'CSV UTF-8'; elsewhere e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    first = text.split("\n", 1)[0]
    try:
        dialect = csv.Sniffer().sniff(first if first.strip() else text[:65536], delimiters=",;\t")
    except csv.Error:
        return csv.excel
    # A header line without quotes makes the sniffer guess doublequote=False; then a quoted prompt with an
    # escaped quote (RFC 4180's "" as in COCO's  "A ""Virgin Records"" train") splits into extra fields.
    dialect.doublequote = True
    return dialect


@functools.lru_cache(maxsize=32)
def _read(path: str, size: int, mtime_ns: int) -> Table:  # size and mtime: an edited file is read again
    file = Path(path)
    text = _decode(file, file.read_bytes())
    if "\x00" in text:
        raise ConfigError(f"{path} contains NUL bytes: it is not a text file")
    reader = csv.reader(io.StringIO(text, newline=""), _dialect(text), strict=True)  # an unclosed quote is an error
    try:
        raw_header = next(reader, None)
        if not raw_header or not any(h.strip() for h in raw_header):
            raise ConfigError(f"{path} is empty or has no header line (the first line must name the columns)")
        header = tuple(normalise(h) for h in raw_header)
        for column in READ_COLUMNS:
            where = [i + 1 for i, h in enumerate(header) if h == column]
            if len(where) > 1:
                raise ConfigError(
                    f"{path} has {len(where)} '{column}' columns (columns {where}); keep one, so it is clear which "
                    f"is read"
                )
        rows = []
        for values in reader:
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue  # blank line
            if len(values) > len(header):
                raise ConfigError(
                    f"{path}, line {line}: {len(values)} fields for {len(header)} columns; a prompt that contains "
                    f'the separator must be quoted ("a cat, sitting")'
                )
            rows.append((line, dict(zip(header, values, strict=False))))
    except csv.Error as err:
        raise ConfigError(f"{path}, line {reader.line_num}: not a readable CSV file ({err})") from None
    return Table(path, header, tuple(rows))


def read_table(path: str | Path, prompt_column: str = "prompt") -> Table:
    """The table in ``path``; ``prompt_column`` names the column read as the prompt where a published set calls it
    otherwise (MMA-Diffusion's ``adv_prompt``)."""
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"prompt file '{file}' is a folder; give the path of a CSV file in it")
    if not file.is_file():
        raise ConfigError(f"prompt file '{file}' does not exist")
    stat = file.stat()
    table = _read(str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    column = normalise(prompt_column)
    if column != "prompt" and column in table.header:
        header = tuple(h for h in table.header if h != "prompt") + ("prompt",)
        table = Table(
            table.path, header, tuple((line, {**row, "prompt": row.get(column, "")}) for line, row in table.rows)
        )
    if column not in table.header:
        raise ConfigError(f"prompt file '{file}' has no '{column}' column (header: {list(table.header)})")
    return table


def _first(row: dict[str, str], columns: Iterable[str]) -> tuple[str, str] | None:
    for column in columns:
        value = (row.get(column) or "").strip()
        if value:
            return column, value
    return None


def parse_seed(text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"{where}: seed {text!r} is not a number") from None
        if not math.isfinite(number) or number != int(number):
            raise ConfigError(f"{where}: seed {text!r} is not a whole number") from None
        value = int(number)
    return check_seed(value, where)


def parse_guidance(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: guidance scale {text!r} is not a number") from None
    try:
        check_guidance_scale(value, "guidance scale")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return value


def prompt_rows(table: Table, *, category: str | None = None, stratum_column: str | None = None) -> list[PromptRow]:
    """The rows of an I2P-format table, filtered by ``category`` (rows whose ``categories`` list it)."""
    if category is not None and not table.has("categories"):
        raise ConfigError(
            f"{table.path}: cannot keep category '{category}': the file has no 'categories' column "
            f"(set the category to null to keep every row)"
        )
    out = []
    for line, row in table.rows:
        where = f"{table.path}, line {line}"
        categories = tuple(c.strip() for c in (row.get("categories") or "").split(",") if c.strip())
        if category is not None and category not in categories:
            continue
        prompt = (row.get("prompt") or "").strip()
        if not prompt:
            raise ConfigError(f"{where}: empty prompt")
        seed = _first(row, SEED_COLUMNS)
        guidance = _first(row, GUIDANCE_COLUMNS)
        extra = {"source_line": line, **{k: row[k] for k in KEPT_COLUMNS if row.get(k)}}
        stratum = (row.get(stratum_column) or "",) if stratum_column else ()
        out.append(
            PromptRow(
                prompt,
                parse_seed(seed[1], where) if seed else None,
                parse_guidance(guidance[1], where) if guidance else None,
                categories,
                extra,
                stratum,
            )
        )
    return out
