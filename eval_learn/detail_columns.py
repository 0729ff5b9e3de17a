"""The details of each metric worth a column beside its value (leaderboard, figures, a run's closing lines), with
whether higher is better for each: one place for the fact."""

from __future__ import annotations

DETAIL_COLUMNS: dict[str, dict[str, bool]] = {
    # ira: all retain prompts (prompt files have no near/far split)
    "ua_ira": {"ua": True, "ira": True, "ira_near": True, "ira_far": True},
    "err": {"erasure": True, "retention": True, "robustness": True},
    # question-level accuracy beside the caption-averaged value (per-type accuracy stays in the details)
    "tifa": {"question_accuracy": True},
}
