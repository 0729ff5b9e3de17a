"""The errors a person sees as one message, without a traceback (``HYDRA_FULL_ERROR=1`` still shows it).

- :class:`ConfigError` — the input is wrong (a key, a value, a file): found before any model loads; exit code 2.
- :class:`RunError` — the run could not produce a trustworthy result (a non-finite loss, a full disk, a model that
  cannot be loaded offline): it stops with a message that says what to do; exit code 1.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EvalLearnError(Exception):
    """Base of the errors that are reported as a message rather than a traceback."""

    exit_code = 1

    def __str__(self) -> str:
        """One line, always: a line break in a value the message quotes (a typed ``'\\n'``) is shown escaped."""
        return super().__str__().strip().replace("\r", "\\r").replace("\n", "\\n")


class ConfigError(EvalLearnError, ValueError):
    """A configuration value or input file is missing, unknown, of the wrong type or impossible."""

    exit_code = 2


class RunError(EvalLearnError, RuntimeError):
    """The run stopped because going on would produce a wrong or untrustworthy number, or could not go on at all."""

    exit_code = 1


class NonFiniteError(RunError):
    """A loss, a weight or an image is NaN or infinite: nothing computed from it is a result, nothing is cached."""
