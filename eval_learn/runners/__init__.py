"""``SingleBenchmarkRunner`` (one technique × one metric) and ``MultiBenchmarkRunner`` (one technique × several)."""

from eval_learn.runners.multi import MultiBenchmarkRunner
from eval_learn.runners.single import SingleBenchmarkRunner

__all__ = ["MultiBenchmarkRunner", "SingleBenchmarkRunner"]
