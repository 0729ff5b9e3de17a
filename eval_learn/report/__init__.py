"""From runs to a paper's table: the leaderboard of every report under a folder (``eval-learn summarize DIR``, and at
the end of every multirun through :class:`eval_learn.report.callback.LeaderboardCallback`), its figures and one
self-contained HTML page."""

from eval_learn.report.leaderboard import Leaderboard, gather
from eval_learn.report.summarize import Summary, summarize

__all__ = ["Leaderboard", "Summary", "gather", "summarize"]
