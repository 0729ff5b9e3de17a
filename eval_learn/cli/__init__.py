"""The command line, ``python -m eval_learn`` / ``eval-learn``: the Hydra app and the subcommands.

python -m eval_learn                                        # MiniWorld: ESD erases "red"; asr + ua_ira
python -m eval_learn model=tiny technique=esd metric=asr    # metric=X: the single runner on X
python -m eval_learn technique=esd/esd_sd                   # another of the technique's recipes (its release's)
python -m eval_learn -m technique=free_run,esd metric=asr   # a sweep, one folder per job
python -m eval_learn technique=esd 'metrics=[asr,ua_ira]'   # one technique, several metrics
python -m eval_learn path/to/run.yaml|run.json [overrides]  # a seed-format or saved (.hydra) config
eval-learn summarize DIR                                    # the leaderboard of every run under DIR
eval-learn list [KIND]                                      # every technique, metric, judge, prompt set, model, protocol

Every mistake in the input ends with one message on stderr and exit code 2, before any model loads: every job of a
sweep is composed and validated first. A run that cannot produce a trustworthy number stops with a message and exit
code 1. ``HYDRA_FULL_ERROR=1`` shows the traceback instead.

Its rooms: :mod:`~eval_learn.cli.main` (which of them a command line is), :mod:`~eval_learn.cli.arguments` (the
arguments as Hydra reads them, run files), :mod:`~eval_learn.cli.precheck` (every job checked before any runs),
:mod:`~eval_learn.cli.hydra_app` (the Hydra job), :mod:`~eval_learn.cli.app_help` (``--help``) and
:mod:`~eval_learn.cli.subcommands` (``list``, ``summarize``, ``merge``). Model code is imported only when a job runs.
"""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers is imported: no torchvision notices
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # no accelerate notice
