"""``python -m eval_learn`` and the ``eval-learn`` console script: the command line of :mod:`eval_learn.cli`."""

from __future__ import annotations

import sys

from eval_learn.cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
