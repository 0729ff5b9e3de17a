"""One self-contained HTML page: the leaderboard, the figures and the image grids, every picture embedded as base64
PNG, no external asset (it can be mailed, archived or opened offline)."""

from __future__ import annotations

import base64
import time
from html import escape

from eval_learn.report.leaderboard import Leaderboard

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; }
.note { color: #555; font-size: 0.9em; }
"""


def _image(data: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def page(board: Leaderboard, figures: list[tuple[str, str, bytes]], grids: list[tuple[str, bytes]]) -> str:
    """``figures``: (section, caption, PNG bytes); ``grids``: (caption, PNG bytes)."""
    headers, cells = board.table()
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>eval_learn leaderboard: {escape(str(board.root))}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Leaderboard</h1>",
        f'<p class="note">{escape(str(board.root))} · {board.runs_found} run(s) · '
        f"{len(board.rows)} row(s) · written {escape(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
        f'<p class="note">{escape(board.rule())}</p>',
    ]
    if cells:
        parts.append("<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in line) + "</tr>" for line in cells]
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No complete results.</p>")
    section = None
    for name, caption, data in figures:
        if name != section:
            parts.append(f"<h2>{escape(name)}</h2>")
            section = name
        parts.append(f"<figure>{_image(data, caption)}<figcaption>{escape(caption)}</figcaption></figure>")
    if grids:
        parts.append("<h2>What the techniques draw</h2>")
        parts.append('<p class="note">The first images of each metric of each run in the table, with their prompts '
                     "(above) and the judge's verdicts (below; red: the erased concept is still there, or a concept "
                     "that should stay changed).</p>")  # fmt: skip
        parts += [f"<figure>{_image(data, caption)}<figcaption>{escape(caption)}</figcaption></figure>"
                  for caption, data in grids]  # fmt: skip
    for title, items in board.notes():
        if items:
            parts.append(f"<h2>{escape(title)}</h2><ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
