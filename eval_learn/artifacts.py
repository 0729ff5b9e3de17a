"""Deprecated alias of :mod:`eval_learn.run_id` (the module was renamed for what it holds); import from there."""

from __future__ import annotations

import warnings

from eval_learn.run_id import make_run_id

__all__ = ["make_run_id"]
warnings.warn("eval_learn.artifacts is deprecated: import from eval_learn.run_id", DeprecationWarning, stacklevel=2)
