"""Deprecated alias of :mod:`eval_learn.engine.headline` (the lines a run ends with, beside the leaderboard); import from there."""

from __future__ import annotations

import warnings

from eval_learn.engine.headline import HEADLINE_DETAILS, result_line, summary_lines

__all__ = ["HEADLINE_DETAILS", "result_line", "summary_lines"]
warnings.warn(
    "eval_learn.summary is deprecated: import from eval_learn.engine.headline", DeprecationWarning, stacklevel=2
)
