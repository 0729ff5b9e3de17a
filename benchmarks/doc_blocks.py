"""Generated blocks in the docs: a benchmark script replaces the text between a page's two markers, nothing else.

    <!-- generated:NAME start -->
    ...what the script wrote...
    <!-- generated:NAME end -->

So a page's prose stays hand-written while its table is always the one the script measured last.
"""

from __future__ import annotations

from pathlib import Path


def replace_block(page: Path, name: str, body: str) -> None:
    """Put ``body`` between the ``generated:NAME`` markers of ``page`` (both must be there, once each)."""
    start, end = f"<!-- generated:{name} start -->", f"<!-- generated:{name} end -->"
    text = page.read_text(encoding="utf-8")
    if text.count(start) != 1 or text.count(end) != 1:
        raise SystemExit(f"{page}: needs the markers '{start}' and '{end}' once each")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    page.write_text(f"{head}{start}\n{body}\n{end}{tail}", encoding="utf-8")
