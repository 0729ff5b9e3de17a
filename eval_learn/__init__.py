"""eval_learn: a benchmark for concept erasure in text-to-image diffusion models."""

from __future__ import annotations

import os
import sys

# Idle CPU threads sleep rather than spin. torch's CPU build runs its threads on GNU OpenMP, whose waiting threads
# spin by default: on a two-core machine with other work running, the default two threads then made a run about 3x
# slower than one thread (7-13x in the issue that found it); with sleeping threads the default is as fast as one
# thread there (benchmarks/busy_machine_threads.py, docs/newcomer.md). OpenMP reads this once, when torch loads, so
# it is set before any module of ours imports torch; a user's own OMP_WAIT_POLICY wins.
TORCH_LOADED_FIRST = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

__all__ = ["__version__"]
